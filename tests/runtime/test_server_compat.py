"""Where the OpenAI-compatible server answers as OpenAI and vLLM do, on the tiny model: a completion that does not
fit the context is refused, not cut; fields vLLM refuses are 400s naming them; tool_choice "none" and
parallel_tool_calls; the finish reason of a call cut by the token limit; an error inside a stream; logprob bytes.
The tiny model writes tool calls when a guided_choice holds it to them."""

import json

import httpx
import pytest

from tests.runtime.test_server import CONTEXT, MODEL_NAME, PROMPT, USER, CharTokenizer, server

__all__ = ["server"]  # the module's server, for the tests below

CHAT_PROMPT_TOKENS = len(CharTokenizer().encode_chat(USER))


FIRST_CALL = '<tool_call>{"name": "f", "arguments": {}}</tool_call>'
TWO_CALLS = FIRST_CALL + '<tool_call>{"name": "g", "arguments": {}}</tool_call>'
TOOLS = [{"type": "function", "function": {"name": name}} for name in ("f", "g")]


def post(server, route: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server[0]}/v1/{route}", json={"model": MODEL_NAME, **body}, timeout=60)


def events(server, route: str, body: dict) -> list[str]:
    """The `data:` payloads of a streamed request, [DONE] included."""
    with httpx.stream("POST", f"{server[0]}/v1/{route}", json={"model": MODEL_NAME, **body, "stream": True},
                      timeout=60) as response:
        return [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]


def chat_answer(server, body: dict, streamed: bool) -> tuple[list[str], str]:
    """The names of the answer's tool calls and its finish reason, from the whole answer or from its stream."""
    body = {"messages": USER, "temperature": 0, **body}
    if not streamed:
        choice = post(server, "chat/completions", body).json()["choices"][0]
        return [c["function"]["name"] for c in choice["message"].get("tool_calls") or []], choice["finish_reason"]
    choices = [c for e in events(server, "chat/completions", body)[:-1] for c in json.loads(e)["choices"]]
    names = [call["function"]["name"] for c in choices for call in c["delta"].get("tool_calls") or []]
    return names, [c["finish_reason"] for c in choices if c["finish_reason"]][-1]


@pytest.mark.parametrize("route, body, prompt_tokens, param", [
    ("chat/completions", {"messages": USER, "max_tokens": CONTEXT}, CHAT_PROMPT_TOKENS, "max_tokens"),
    ("chat/completions", {"messages": USER, "max_tokens": CONTEXT, "stream": True}, CHAT_PROMPT_TOKENS,
     "max_tokens"),
    ("chat/completions", {"messages": USER, "max_completion_tokens": CONTEXT}, CHAT_PROMPT_TOKENS,
     "max_completion_tokens"),
    ("completions", {"prompt": PROMPT, "max_tokens": CONTEXT}, len(PROMPT), "max_tokens"),
])
def test_max_tokens_past_the_room_left_is_a_400_and_the_room_itself_is_served(server, route, body, prompt_tokens,
                                                                                param):
    """vLLM and OpenAI refuse it; it was cut to the room silently, so a client meant for them could not tell."""
    refused = post(server, route, body)
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    prompt = "messages" if route == "chat/completions" else "prompt"
    assert error["message"].startswith(
        f"This model's maximum context length is {CONTEXT} tokens. However, you requested {prompt_tokens + CONTEXT} "
        f"tokens ({prompt_tokens} in the {prompt}, {CONTEXT} in the completion).")
    room = CONTEXT - prompt_tokens
    served = post(server, route, {**body, "stream": False, param: room, "ignore_eos": True}).json()
    assert served["usage"]["completion_tokens"] == room and served["choices"][0]["finish_reason"] == "length"


def test_without_max_tokens_a_chat_may_fill_the_context(server):
    served = post(server, "chat/completions", {"messages": USER, "ignore_eos": True}).json()
    assert served["usage"]["completion_tokens"] == CONTEXT - CHAT_PROMPT_TOKENS


@pytest.mark.parametrize("route, body", [
    ("chat/completions", {"messages": [{"role": "user", "content": "x" * CONTEXT}]}),
    ("completions", {"prompt": "x" * CONTEXT}),
])
def test_a_prompt_that_fills_the_context_is_a_400_in_the_same_words(server, route, body):
    error = post(server, route, {**body, "max_tokens": 1}).json()["error"]
    assert error["message"].startswith(f"This model's maximum context length is {CONTEXT} tokens. However, your ")


@pytest.mark.parametrize("route, body, param", [
    ("chat/completions", {"messages": USER, "stream_options": {"include_usage": True}}, "stream_options"),
    ("completions", {"prompt": PROMPT, "stream_options": {"include_usage": False}}, "stream_options"),
    ("chat/completions", {"messages": USER, "best_of": 3}, "best_of"),  # OpenAI's chat has none
    ("completions", {"prompt": PROMPT, "n": 3, "best_of": 2}, "best_of"),
    ("chat/completions", {"messages": USER, "stop": ""}, "stop"),
    ("completions", {"prompt": PROMPT, "stop": ["a", ""]}, "stop"),
    ("completions", {"prompt": PROMPT, "logit_bias": {"5": 101}}, "logit_bias"),
    ("chat/completions", {"messages": USER, "logit_bias": {"\u00b2": 1}}, "logit_bias"),  # a digit int() refuses
    ("chat/completions", {"messages": USER, "ignore_eos": True, "guided_regex": "a+"}, "ignore_eos"),
    # a text-only model: an image was dropped silently and the question answered without it, as vLLM refuses
    ("chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is in it?"}, {"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}]},
     "messages"),
    ("chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
     "messages"),  # a 500
    ("chat/completions", {"messages": [{"role": "user", "content": ["hi"]}]}, "messages"),  # dropped silently
])
def test_what_vllm_refuses_is_a_400_naming_the_field(server, route, body, param):
    """stream_options without a stream and best_of were ignored silently; the sampler's own refusals (an empty stop
    string, ...) named no field."""
    refused = post(server, route, {**body, "max_tokens": 2})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == param, refused.text


@pytest.mark.parametrize("route, field, value", [
    ("completions", "repetition_penalty", "Infinity"),  # Python's JSON reader takes the literals
    ("chat/completions", "repetition_penalty", "NaN"),
    ("completions", "repetition_penalty", "1e-40"),  # a positive logit divided by it overflows fp32
    ("chat/completions", "repetition_penalty", "1e300"),
    ("completions", "temperature", "Infinity"),
    ("chat/completions", "temperature", "NaN"),
    ("completions", "top_p", "NaN"),
    ("chat/completions", "min_p", "-Infinity"),
    ("completions", "presence_penalty", "2.5"),
    ("chat/completions", "frequency_penalty", "NaN"),
    ("completions", "top_k", "-2"),
    ("chat/completions", "logit_bias", '{"5": Infinity}'),
])
def test_a_non_finite_or_absurd_sampling_value_is_a_400_naming_the_field(server, route, field, value):
    """repetition_penalty Infinity passed `gt=0`: a seen token whose logit is 0 became NaN (0 x inf)."""
    prompt = f'"prompt": {json.dumps(PROMPT)}' if route == "completions" else f'"messages": {json.dumps(USER)}'
    raw = f'{{"model": "{MODEL_NAME}", {prompt}, "max_tokens": 2, "{field}": {value}}}'
    refused = httpx.post(f"{server[0]}/v1/{route}", content=raw, headers={"content-type": "application/json"},
                         timeout=60)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == field, refused.text


@pytest.mark.parametrize("route, body", [
    ("chat/completions", {"messages": USER, "stream": True, "stream_options": {"include_usage": True}}),
    ("completions", {"prompt": PROMPT, "stream_options": None}),
    ("completions", {"prompt": PROMPT, "best_of": 1}),
    ("completions", {"prompt": PROMPT, "n": 2, "best_of": 2}),  # the best 2 of 2: all of them
    ("completions", {"prompt": PROMPT, "best_of": 3}),  # the best 1 of 3: tests/runtime/test_server_best_of.py
    ("chat/completions", {"messages": USER, "top_k": -1}),  # vLLM's "no top-k cut", as 0
    ("chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}),
])
def test_what_vllm_takes_is_served(server, route, body):
    assert post(server, route, {**body, "max_tokens": 2}).status_code == 200


@pytest.mark.parametrize("streamed", [False, True])
def test_parallel_tool_calls_false_keeps_only_the_first_call(server, streamed):
    body = {"tools": TOOLS, "guided_choice": [TWO_CALLS], "max_tokens": len(TWO_CALLS) + 1}
    assert chat_answer(server, body, streamed) == (["f", "g"], "tool_calls")
    assert chat_answer(server, {**body, "parallel_tool_calls": False}, streamed) == (["f"], "tool_calls")


@pytest.mark.parametrize("streamed", [False, True])
def test_a_call_followed_by_text_the_token_limit_cut_finishes_with_length(server, streamed):
    """OpenAI's "length" whenever the limit ended the answer (as heavy's runtime backend says too): "tool_calls" hid
    that the answer was cut."""
    body = {"tools": TOOLS, "guided_choice": [FIRST_CALL + "and more to say"], "max_tokens": len(FIRST_CALL) + 4}
    assert chat_answer(server, body, streamed) == (["f"], "length")


def test_tool_choice_none_shows_the_model_the_tools_and_parses_no_call(server):
    """As vLLM: the tools stay in the prompt (the conversation may have used them), and nothing is read as a call."""
    body = {"messages": USER, "tools": TOOLS, "tool_choice": "none", "guided_choice": [TWO_CALLS],
            "max_tokens": len(TWO_CALLS) + 1, "temperature": 0}
    reply = post(server, "chat/completions", body).json()
    assert reply["usage"]["prompt_tokens"] == len(CharTokenizer().encode_chat(USER, TOOLS))
    choice = reply["choices"][0]
    assert "tool_calls" not in choice["message"] and choice["finish_reason"] == "stop"
    assert '"name": "g"' in choice["message"]["content"]


@pytest.mark.parametrize("route, body", [("chat/completions", {"messages": USER}),
                                         ("completions", {"prompt": PROMPT})])
def test_an_error_inside_a_stream_is_followed_by_done(server, monkeypatch, route, body):
    """vLLM sends [DONE] after the error event; clients waiting for it hung until their timeout."""
    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(server[1].engine, "add_request", fail)
    data = events(server, route, {**body, "max_tokens": 2, "stream_options": {"include_usage": True}})
    assert data[-1] == "[DONE]" and json.loads(data[-2])["error"]["message"] == "boom"


def test_chat_logprobs_carry_each_tokens_bytes(server):
    """OpenAI's schema: a client joins a character split across tokens from them."""
    body = {"messages": USER, "max_tokens": 6, "logprobs": True, "top_logprobs": 2, "ignore_eos": True}
    entries = post(server, "chat/completions", body).json()["choices"][0]["logprobs"]["content"]
    scored = entries + [alternative for entry in entries for alternative in entry["top_logprobs"]]
    assert all(each["bytes"] == list(each["token"].encode()) for each in scored)  # one ASCII byte a token here


def test_an_answer_with_no_text_has_empty_content_and_one_with_only_calls_null(server):
    """OpenAI's and vLLM's: "" for an answer with no text and no call (here a stop string in its first token), null
    beside tool calls. The answer with no text was null: clients reading the text (`content.strip()`) failed."""
    empty = post(server, "chat/completions", {"messages": USER, "guided_choice": ["ab"], "stop": ["a"],
                                              "max_tokens": 4, "temperature": 0}).json()["choices"][0]
    assert (empty["message"]["content"], empty["finish_reason"]) == ("", "stop")
    calls = post(server, "chat/completions", {"messages": USER, "tools": TOOLS, "guided_choice": [FIRST_CALL],
                                              "max_tokens": len(FIRST_CALL) + 1, "temperature": 0}).json()
    message = calls["choices"][0]["message"]
    assert message["content"] is None and [c["function"]["name"] for c in message["tool_calls"]] == ["f"]


@pytest.mark.parametrize("logprobs", [0, 1, 3])
def test_completion_top_logprobs_hold_the_token_and_its_likeliest_alternatives(server, logprobs):
    """OpenAI's API and vLLM: the sampled token's logprob and the `logprobs` likeliest, so up to logprobs + 1 entries;
    `logprobs: 0` gave empty dicts, and a sampled token outside the top was missing."""
    body = {"prompt": PROMPT, "max_tokens": 8, "temperature": 1.5, "seed": 3, "logprobs": logprobs,
            "ignore_eos": True}
    scores = post(server, "completions", body).json()["choices"][0]["logprobs"]
    for token, logprob, top in zip(scores["tokens"], scores["token_logprobs"], scores["top_logprobs"], strict=True):
        assert top[token] == logprob and logprobs <= len(top) <= logprobs + 1
        assert logprobs == 0 or max(top.values()) >= logprob
