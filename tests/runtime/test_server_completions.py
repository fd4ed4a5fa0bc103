"""The OpenAI-compatible server's /v1/completions: a raw prompt continued as written, in the legacy text API's shapes
(text or token ids, several prompts and choices, echo and logprobs as lm-eval reads them, streaming, refusals), over
test_server.py's tiny random Qwen2."""

import asyncio
import json
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.runtime.test_server import CONTEXT, MODEL_NAME, PROMPT, CharTokenizer, client, complete, server

__all__ = ["client", "server"]  # fixtures


def test_a_prompt_is_continued_the_same_streamed_or_not_as_text_or_as_ids(server, client):
    whole = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=12, temperature=0)
    assert whole.object == "text_completion" and whole.model == MODEL_NAME and whole.id.startswith("cmpl-")
    ended = whole.choices[0].finish_reason == "stop"  # at the end-of-text token, which has no text
    assert whole.usage.prompt_tokens == len(PROMPT)
    assert whole.usage.completion_tokens == len(whole.choices[0].text) + ended
    assert whole.choices[0].finish_reason in ("stop", "length") and whole.choices[0].text
    streamed = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=12, temperature=0, stream=True,
                                         stream_options={"include_usage": True})
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    ids = CharTokenizer().encode(PROMPT)
    for prompt in (ids, [ids], [PROMPT]):  # token ids, and a list of one prompt in either form
        assert complete(server, prompt=prompt, max_tokens=12, temperature=0).json()["choices"][0]["text"] == (
            whole.choices[0].text)


def test_ignore_eos_gives_max_tokens_tokens(server):
    # what serving benchmarks send (an extension of vLLM and SGLang); this tiny model stops early on this prompt
    prompt = "the quick brown fox"
    ended = complete(server, prompt=prompt, max_tokens=40, temperature=0).json()
    assert ended["choices"][0]["finish_reason"] == "stop" and ended["usage"]["completion_tokens"] < 40
    forced = complete(server, prompt=prompt, max_tokens=40, temperature=0, ignore_eos=True).json()
    assert forced["choices"][0]["finish_reason"] == "length" and forced["usage"]["completion_tokens"] == 40


def test_max_tokens_defaults_to_16_and_logprobs_come_in_this_apis_shape(server):
    default = complete(server, prompt=PROMPT, temperature=0, stop=None).json()
    assert default["usage"]["completion_tokens"] <= 16
    choice = complete(server, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=2).json()["choices"][0]
    logprobs = choice["logprobs"]
    ended = choice["finish_reason"] == "stop"  # the end-of-text token is listed, with no text
    assert "".join(logprobs["tokens"]) == choice["text"] and len(logprobs["tokens"]) == len(choice["text"]) + ended
    assert all(lp <= 0 for lp in logprobs["token_logprobs"])
    assert all(len(top) == 2 and max(top.values()) >= lp
               for top, lp in zip(logprobs["top_logprobs"], logprobs["token_logprobs"], strict=True))
    assert logprobs["text_offset"] == list(range(len(logprobs["tokens"])))  # one character per token here
    assert complete(server, prompt=PROMPT, max_tokens=3).json()["choices"][0]["logprobs"] is None


def test_echo_returns_the_prompt_with_its_logprobs_as_a_decode_computed_them(server):
    # lm-eval's log-likelihood requests: echo, logprobs, one token; it sums token_logprobs past the context
    first = complete(server, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=1).json()["choices"][0]
    continued = PROMPT + first["text"]
    echoed = complete(server, prompt=continued, max_tokens=1, temperature=0, logprobs=1, echo=True).json()
    choice, logprobs = echoed["choices"][0], echoed["choices"][0]["logprobs"]
    # the one new token may be the end-of-text token, listed with no text
    assert choice["text"].startswith(continued) and len(choice["text"]) - len(continued) in (0, 1)
    assert "".join(logprobs["tokens"]) == choice["text"] and logprobs["text_offset"] == list(range(len(continued) + 1))
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None  # nothing predicts it
    assert (echoed["usage"]["prompt_tokens"], echoed["usage"]["completion_tokens"]) == (len(continued), 1)
    # the prompt's tail is the first completion: computed in one prefill, its logprobs are what decoding gave
    decoded = first["logprobs"]["token_logprobs"][:len(first["text"])]
    assert logprobs["token_logprobs"][len(PROMPT):len(continued)] == pytest.approx(decoded, abs=1e-4)
    # streamed, the prompt comes first; without logprobs only the text is echoed
    with httpx.stream("POST", server[0] + "/v1/completions", json={
            "model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 3, "temperature": 0, "echo": True,
            "stream": True}) as response:
        data = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    assert data[0]["choices"][0]["text"].startswith(PROMPT)
    plain = complete(server, prompt=PROMPT, max_tokens=3, temperature=0, echo=True).json()["choices"][0]
    assert "".join(d["choices"][0]["text"] for d in data) == plain["text"] and plain["logprobs"] is None
    assert plain["text"] == PROMPT + complete(server, prompt=PROMPT, max_tokens=3, temperature=0).json()[
        "choices"][0]["text"]
    # max_tokens 0 with echo scores the prompt and generates nothing, as OpenAI's legacy API took it
    scored = complete(server, prompt=continued, max_tokens=0, logprobs=1, echo=True).json()
    assert scored["choices"][0]["text"] == continued and scored["usage"]["completion_tokens"] == 0
    assert scored["choices"][0]["logprobs"]["token_logprobs"][1:] == pytest.approx(
        logprobs["token_logprobs"][1:len(continued)], abs=1e-5)
    assert scored["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("body, status, param", [
    ({"prompt": PROMPT, "suffix": "end"}, 400, "suffix"),  # this tiny model has no fill-in-the-middle tokens
    ({"prompt": PROMPT, "suffix": "end", "echo": True}, 400, "suffix"),
    ({"prompt": [PROMPT, ""]}, 400, "prompt"),
    ({"prompt": [[5, 6], [5, 97]]}, 400, "prompt"),  # one prompt with an id past the vocabulary
    ({"prompt": [PROMPT] * 33, "n": 2}, 400, "n"),  # 66 choices, past 64
    ({"prompt": ""}, 400, "prompt"),
    ({"prompt": [5, 97, 400]}, 400, "prompt"),  # ids past the vocabulary of 97
    ({"prompt": "x" * CONTEXT}, 400, "prompt"),
    ({"prompt": PROMPT, "n": 0}, 400, "n"),
    ({"prompt": PROMPT, "max_tokens": 0}, 400, "max_tokens"),
    ({"prompt": PROMPT, "model": "gpt-3.5-turbo-instruct"}, 404, "model"),
])
def test_bad_requests_are_refused_with_the_field_named_and_the_server_keeps_serving(server, body, status, param):
    response = complete(server, **body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"]
    assert complete(server, prompt=PROMPT, max_tokens=2).json()["usage"]["completion_tokens"] >= 1


def test_several_prompts_and_choices_are_each_what_one_request_gives(server):
    def texts(response: dict) -> list[str]:
        assert [c["index"] for c in response["choices"]] == list(range(len(response["choices"])))
        return [c["text"] for c in response["choices"]]

    other = "jumps over the lazy dog"
    both = complete(server, prompt=[PROMPT, other], max_tokens=8, temperature=0).json()
    alone = [texts(complete(server, prompt=p, max_tokens=8, temperature=0).json())[0] for p in (PROMPT, other)]
    assert texts(both) == alone
    assert both["usage"]["prompt_tokens"] == len(PROMPT) + len(other)
    assert both["usage"]["completion_tokens"] == sum(len(t) for t in alone) + sum(
        c["finish_reason"] == "stop" for c in both["choices"])  # an end-of-text token has no text
    # n choices of a seeded request: choice j is what seed + j gives alone
    sampling = {"prompt": PROMPT, "max_tokens": 8, "temperature": 1.0}
    sampled = complete(server, **sampling, seed=7, n=3).json()
    assert texts(sampled) == [texts(complete(server, **sampling, seed=7 + j).json())[0] for j in range(3)]
    assert len(set(texts(sampled))) > 1 and sampled["usage"]["prompt_tokens"] == len(PROMPT)  # counted once
    # streamed, each event carries one choice's delta
    with httpx.stream("POST", server[0] + "/v1/completions", json={
            "model": MODEL_NAME, "prompt": [PROMPT, other], "max_tokens": 8, "temperature": 0,
            "stream": True}) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    assert all(len(e["choices"]) == 1 for e in events)
    assert ["".join(e["choices"][0]["text"] for e in events if e["choices"][0]["index"] == i) for i in (0, 1)] == alone


def test_leaving_a_stream_of_several_choices_aborts_every_request(server, monkeypatch):
    engine, aborted = server[1], []
    abort = engine.engine.abort
    monkeypatch.setattr(engine.engine, "abort", lambda rid: aborted.append(rid) or abort(rid))
    with httpx.stream("POST", server[0] + "/v1/completions", json={
            "model": MODEL_NAME, "prompt": [PROMPT, "abc", "xyz"], "max_tokens": 200, "n": 2, "stream": True,
            "temperature": 1.0}) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                break  # the client goes away after the first event
    deadline = time.monotonic() + 60
    while engine.engine.has_unfinished() or not aborted:  # 200 tokens each: they were stopped, not finished
        assert time.monotonic() < deadline, "abandoned requests never aborted"
        time.sleep(0.05)
    blocks = engine.engine.scheduler.block_manager
    assert blocks.num_free_blocks == len(blocks.blocks)


def test_a_stream_ends_with_done(server):
    with httpx.stream("POST", server[0] + "/v1/completions",
                      json={"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 4, "stream": True}) as response:
        data = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    assert all(json.loads(d)["object"] == "text_completion" for d in data[:-1])


def test_the_openai_client_reads_a_wrong_model_as_not_found(client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt=PROMPT, max_tokens=2)


def test_the_serving_benchmark_times_streamed_requests(server):
    # scripts/bench_serve.py's client against this server: every request streams its exact token count
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    from bench_serve import run_at

    prompts = [[1 + (i * 7 + j) % 90 for j in range(20)] for i in range(4)]
    timings, seconds = asyncio.run(run_at(server[0], MODEL_NAME, prompts, 2, output_tokens=12))
    assert len(timings) == 4 and all(t.tokens == 12 for t in timings)
    assert all(0 < t.ttft <= t.e2e <= seconds and t.tpot >= 0 for t in timings)


def test_logit_bias_and_penalties_reach_the_sampler_and_bad_bias_keys_are_400s(server):
    forced = complete(server, prompt=PROMPT, max_tokens=4, temperature=0, ignore_eos=True,
                      logit_bias={str(ord("z") - 31): 100})  # the CharTokenizer's id of "z"
    assert forced.json()["choices"][0]["text"] == "zzzz"
    plain = complete(server, prompt=PROMPT, max_tokens=12, temperature=0, ignore_eos=True).json()
    penalized = complete(server, prompt=PROMPT, max_tokens=12, temperature=0, ignore_eos=True,
                         frequency_penalty=2, presence_penalty=2, repetition_penalty=1.5).json()
    text, plain_text = penalized["choices"][0]["text"], plain["choices"][0]["text"]
    assert text != plain_text  # what the penalties compute: tests/runtime/test_engine.py and test_penalties.py
    for bias, message in (({"z": 1}, "logit_bias keys are token ids below 97, got 'z'"),
                          ({"97": 1}, "got '97'"), ({"5": 101}, "logit_bias values must be in [-100, 100]")):
        refused = complete(server, prompt=PROMPT, max_tokens=2, logit_bias=bias)
        assert refused.status_code == 400 and message in refused.text, refused.text
