"""Edge cases of the OpenAI-compatible server against what OpenAI clients and vLLM expect, on the tiny model: every
token's log-probability streamed, a client gone before a non-streamed answer, out-of-range values as 400s, a stop
string on the last allowed token, malformed JSON."""

import json

import httpx

from tests.runtime.test_server import MODEL_NAME, PROMPT, USER, client, complete, server

__all__ = ["client", "server"]  # the module's server and client, for the tests below


def _events(url: str, route: str, body: dict) -> list[dict]:
    with httpx.stream("POST", f"{url}/v1/{route}", json={"model": MODEL_NAME, **body, "stream": True},
                      timeout=60) as response:
        return [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]


def test_a_stream_carries_the_logprobs_of_every_token_also_of_text_held_back(server):
    """A token whose text is held back (it may start a stop string) or is empty (EOS, taken with ignore_eos) still
    has its log-probability: the stream lists the same tokens as the whole answer, as vLLM's does."""
    url = server[0]
    sampling = {"max_tokens": 12, "temperature": 0, "ignore_eos": True}
    free = complete(server, prompt=PROMPT, **sampling).json()["choices"][0]["text"]
    body = {"prompt": PROMPT, **sampling, "logprobs": 1, "stop": [free[3] + "\x7f"]}  # starts, never completes
    whole = complete(server, **body).json()["choices"][0]["logprobs"]
    streamed = [e["choices"][0]["logprobs"] for e in _events(url, "completions", body) if e["choices"]]
    assert sum((lp["tokens"] for lp in streamed), []) == whole["tokens"]
    assert sum((lp["token_logprobs"] for lp in streamed), []) == whole["token_logprobs"]

    chat = {"messages": USER, **sampling, "logprobs": True, "top_logprobs": 1}
    text = httpx.post(f"{url}/v1/chat/completions", json={"model": MODEL_NAME, **chat}, timeout=60).json()[
        "choices"][0]["message"]["content"]
    chat["stop"] = [text[3] + "\x7f"]
    whole = httpx.post(f"{url}/v1/chat/completions", json={"model": MODEL_NAME, **chat}, timeout=60).json()[
        "choices"][0]["logprobs"]["content"]
    streamed = [t for e in _events(url, "chat/completions", chat) for c in e["choices"]
                for t in (c.get("logprobs") or {}).get("content", [])]
    assert [t["token"] for t in streamed] == [t["token"] for t in whole]
    assert [t["logprob"] for t in streamed] == [t["logprob"] for t in whole]
