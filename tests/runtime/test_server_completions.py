"""`/v1/completions` (the legacy text API benchmark clients speak) on the server of test_server.py: a raw prompt
continued as written, streamed or not, with this API's log-probabilities, and its bad requests refused."""

import json

import httpx
import openai
import pytest

from tests.runtime.test_server import CONTEXT, MODEL_NAME, CharTokenizer, client, server  # noqa: F401 (fixtures)

PROMPT = "the quick brown fox"


def complete(server, **body) -> httpx.Response:
    return httpx.post(server[0] + "/v1/completions", json={"model": MODEL_NAME, **body}, timeout=60)


def test_a_prompt_is_continued_the_same_streamed_or_not_as_text_or_as_ids(server, client):
    whole = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=12, temperature=0)
    assert whole.object == "text_completion" and whole.model == MODEL_NAME and whole.id.startswith("cmpl-")
    assert whole.usage.prompt_tokens == len(PROMPT) and whole.usage.completion_tokens == len(whole.choices[0].text)
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


def test_max_tokens_defaults_to_16_and_logprobs_come_in_this_apis_shape(server):
    default = complete(server, prompt=PROMPT, temperature=0, stop=None).json()
    assert default["usage"]["completion_tokens"] <= 16
    choice = complete(server, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=2).json()["choices"][0]
    logprobs = choice["logprobs"]
    assert "".join(logprobs["tokens"]) == choice["text"] and len(logprobs["tokens"]) == len(choice["text"])
    assert all(lp <= 0 for lp in logprobs["token_logprobs"])
    assert all(len(top) == 2 and max(top.values()) >= lp
               for top, lp in zip(logprobs["top_logprobs"], logprobs["token_logprobs"], strict=True))
    assert logprobs["text_offset"] == list(range(len(choice["text"])))  # one character per token here
    assert complete(server, prompt=PROMPT, max_tokens=3).json()["choices"][0]["logprobs"] is None


@pytest.mark.parametrize("body, status, param", [
    ({"prompt": PROMPT, "echo": True}, 400, "echo"),
    ({"prompt": PROMPT, "suffix": "end"}, 400, "suffix"),
    ({"prompt": [PROMPT, PROMPT]}, 400, "prompt"),
    ({"prompt": ""}, 400, "prompt"),
    ({"prompt": [5, 97, 400]}, 400, "prompt"),  # ids past the vocabulary of 97
    ({"prompt": "x" * CONTEXT}, 400, "prompt"),
    ({"prompt": PROMPT, "n": 2}, 400, "n"),
    ({"prompt": PROMPT, "max_tokens": 0}, 400, "max_tokens"),
    ({"prompt": PROMPT, "model": "gpt-3.5-turbo-instruct"}, 404, "model"),
])
def test_bad_requests_are_refused_with_the_field_named_and_the_server_keeps_serving(server, body, status, param):
    response = complete(server, **body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"]
    assert complete(server, prompt=PROMPT, max_tokens=2).json()["usage"]["completion_tokens"] >= 1


def test_a_stream_ends_with_done(server):
    with httpx.stream("POST", server[0] + "/v1/completions",
                      json={"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 4, "stream": True}) as response:
        data = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    assert all(json.loads(d)["object"] == "text_completion" for d in data[:-1])


def test_the_openai_client_reads_a_wrong_model_as_not_found(client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt=PROMPT, max_tokens=2)
