"""Edge cases of the OpenAI-compatible server against what OpenAI clients and vLLM expect, on the tiny model: every
token's log-probability streamed, a client gone before a non-streamed answer, out-of-range values as 400s, a stop
string on the last allowed token, malformed JSON."""

import concurrent.futures
import json
import socket
import threading
import time

import httpx
import pytest

from runtime.server.protocol import MAX_LOGIT_BIASES, MAX_STOP_CHARS, MAX_STOP_STRINGS, MAX_STOP_TOKEN_IDS
from tests.runtime.test_server import MODEL_NAME, PROMPT, USER, client, complete, scrape_metrics, server

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


def _post_and_leave(url: str, route: str, body: dict, engine) -> None:
    """POST a non-streamed request on a raw socket and close it once the engine has the request."""
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps({"model": MODEL_NAME, **body}).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(f"POST /v1/{route} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        deadline = time.monotonic() + 60
        while not engine.engine.has_unfinished():
            assert time.monotonic() < deadline, "the request never reached the engine"
            time.sleep(0.01)


@pytest.mark.parametrize("route, body", [
    ("chat/completions", {"messages": USER, "n": 2}),
    ("completions", {"prompt": [PROMPT, "abc"]}),
])
def test_a_client_gone_before_a_non_streamed_answer_aborts_its_requests(server, monkeypatch, route, body):
    """As vLLM's `with_cancellation`: a client that hangs up (a timeout, the openai SDK retrying) frees the engine
    of its requests at once instead of leaving them to run to max_tokens."""
    engine, aborted = server[1], []
    run, abort = engine.engine.runner.run, engine.engine.abort
    monkeypatch.setattr(engine.engine.runner, "run", lambda s, f: time.sleep(0.05) or run(s, f))  # ~10 s to finish
    monkeypatch.setattr(engine.engine, "abort", lambda rid: aborted.append(rid) or abort(rid))
    _post_and_leave(server[0], route, {**body, "max_tokens": 200, "ignore_eos": True}, engine)
    deadline = time.monotonic() + 60
    while engine.engine.has_unfinished():
        assert time.monotonic() < deadline, "the abandoned request never ended"
        time.sleep(0.05)
    assert len(aborted) == 2  # both of its engine requests were aborted, not run to their end
    blocks = engine.engine.scheduler.block_manager
    assert blocks.num_free_blocks == len(blocks.blocks)


def test_a_client_gone_before_its_first_token_counts_as_an_abort(server, monkeypatch):
    """A client that gives up while its request waits for its first token (its timeout, in a long queue or prefill)
    counts as finish_reason "abort", as one gone later does: the aborts a dashboard shows were missing exactly the
    requests that waited too long."""
    engine, release = server[1], threading.Event()
    run = engine.engine.runner.run
    monkeypatch.setattr(engine.engine.runner, "run", lambda s, f: release.wait(60) and run(s, f))  # no token yet
    aborts = f'heavy_runtime_requests_total{{finish_reason="abort",model_name="{MODEL_NAME}"}}'
    in_flight = f'heavy_runtime_requests_in_flight{{model_name="{MODEL_NAME}"}}'
    before = scrape_metrics(server).get(aborts, 0.0)
    try:
        _post_and_leave(server[0], "completions", {"prompt": PROMPT, "max_tokens": 4}, engine)
        deadline = time.monotonic() + 60
        while scrape_metrics(server)[in_flight]:  # until the server saw the client gone and dropped the request
            assert time.monotonic() < deadline, "the abandoned request was never dropped"
            time.sleep(0.05)
    finally:
        release.set()
    assert scrape_metrics(server).get(aborts, 0.0) - before == 1


@pytest.mark.parametrize("route, body", [
    ("chat/completions", {"messages": USER}),
    ("chat/completions", {"messages": USER, "stream": True}),
    ("completions", {"prompt": PROMPT}),
])
@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1])
def test_a_seed_past_64_bits_is_a_400_naming_it(server, route, body, seed):
    """OpenAI's and vLLM's seed is a 64-bit integer; a larger one failed in the engine (a 500 in plain text, or an
    error inside a started stream)."""
    response = httpx.post(f"{server[0]}/v1/{route}", json={"model": MODEL_NAME, **body, "seed": seed,
                                                            "max_tokens": 2}, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "seed"
    largest = httpx.post(f"{server[0]}/v1/{route}", json={"model": MODEL_NAME, **body, "seed": 2**63 - 1, "n": 2,
                                                           "max_tokens": 2}, timeout=60)
    assert largest.status_code == 200 and "error" not in largest.text


def test_an_unexpected_failure_is_a_500_with_an_openai_error_body(server, monkeypatch):
    """Clients (the openai SDK, LangChain) read `error.message`; a failure nobody foresaw answered plain text."""
    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(server[1].engine, "add_request", fail)
    response = httpx.post(f"{server[0]}/v1/chat/completions", json={"model": MODEL_NAME, "messages": USER,
                                                                     "max_tokens": 2}, timeout=60)
    assert response.status_code == 500
    assert response.json()["error"] == {"message": "boom", "type": "server_error", "param": None, "code": None}


def test_a_stop_string_ending_on_the_last_allowed_token_is_a_stop(server):
    """The text ends at the stop string, so the finish reason is "stop" (as vLLM's), not "length": a client reading
    "length" takes the answer for truncated and asks again with more tokens."""
    sampling = {"prompt": PROMPT, "temperature": 0, "ignore_eos": True}
    free = complete(server, **sampling, max_tokens=12).json()["choices"][0]["text"]
    stop = free[3:5]
    ends_at = free.index(stop) + len(stop)  # tokens up to the stop string's end (one character per token)
    for max_tokens in (ends_at, ends_at + 1):
        choice = complete(server, **sampling, max_tokens=max_tokens, stop=stop).json()["choices"][0]
        assert (choice["text"], choice["finish_reason"]) == (free[:free.index(stop)], "stop"), max_tokens


@pytest.mark.parametrize("route", ["chat/completions", "completions", "../tokenize"])
def test_a_body_that_is_not_json_is_a_400_naming_no_field(server, route):
    """The parser's position is no field: `param` was "1" for a body broken at its second character."""
    response = httpx.post(f"{server[0]}/v1/{route}", content=b'{bad json', headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] is None and error["type"] == "invalid_request_error"
    assert error["message"].startswith("the body is not valid JSON") and "double quotes" in error["message"]


def test_compiling_a_chats_structured_output_leaves_the_event_loop_free(server, monkeypatch):
    """The first structured request reads the whole vocabulary (151k tokens on the real model) and each new schema
    compiles: off the event loop, as the text route does, so /health and the other streams answer meanwhile."""
    engine = server[1].engine
    entered, gate = threading.Event(), threading.Event()
    check = engine.check_structured

    def slow_check(params):
        if params.structured is not None:
            entered.set()
            assert gate.wait(timeout=30), "the gate was never opened: the event loop was blocked"
        return check(params)

    monkeypatch.setattr(engine, "check_structured", slow_check)
    body = {"model": MODEL_NAME, "messages": USER, "max_tokens": 4, "response_format": {"type": "json_object"}}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        reply = pool.submit(httpx.post, f"{server[0]}/v1/chat/completions", json=body, timeout=60)
        try:
            assert entered.wait(timeout=30)
            health = httpx.get(f"{server[0]}/health", timeout=30)  # answered only if the loop is free
        finally:
            gate.set()
        assert health.json() == {"status": "ok"}
        assert reply.result().status_code == 200


def test_a_seeded_requests_choices_are_what_their_seeds_give_alone_when_drafts_are_checked(server):
    """Three choices decoding together check fewer speculative drafts each than one alone (speculative_max_rows), and
    checking a draft drew more of a seeded choice's random numbers: choice j was not what seed + j gives alone."""
    engine = server[1].engine
    body = {"prompt": "to be or not to be, to be or not to be, to be", "max_tokens": 24, "temperature": 0.1,
            "ignore_eos": True}
    drafted = engine.speculation.drafted
    several = [c["text"] for c in complete(server, **body, seed=3, n=3).json()["choices"]]
    alone = [complete(server, **body, seed=3 + j).json()["choices"][0]["text"] for j in range(3)]
    assert engine.speculation.drafted > drafted  # drafts were checked
    assert several == alone


@pytest.mark.parametrize("route, body", [
    ("chat/completions", {"messages": USER}),
    ("completions", {"prompt": PROMPT}),
])
@pytest.mark.parametrize("field, value", [
    ("stop", [f"never {k}" for k in range(MAX_STOP_STRINGS + 1)]),
    ("stop", "x" * (MAX_STOP_CHARS + 1)),
    ("stop_token_ids", [0] * (MAX_STOP_TOKEN_IDS + 1)),
    ("logit_bias", [("0" * k + "5", 1.0) for k in range(MAX_LOGIT_BIASES + 1)]),  # "05", "005": token 5 each time
])
def test_stops_and_biases_past_their_caps_are_a_400_before_the_engine_sees_them(server, monkeypatch, route, body,
                                                                                 field, value):
    """Stops and biases are applied in the engine's loop at every token: one request with thousands slowed every
    other request's steps. At the caps a request is served."""
    def sent(items):  # logit_bias is a JSON object
        return dict(items) if field == "logit_bias" else items

    def reached(*args, **kwargs):
        raise RuntimeError("the request reached the engine")

    monkeypatch.setattr(server[1].engine, "add_request", reached)
    response = httpx.post(f"{server[0]}/v1/{route}", json={"model": MODEL_NAME, **body, field: sent(value),
                                                            "max_tokens": 2}, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == field
    monkeypatch.undo()
    served = httpx.post(f"{server[0]}/v1/{route}", json={"model": MODEL_NAME, **body, field: sent(value[:-1]),
                                                          "max_tokens": 2}, timeout=60)
    assert served.status_code == 200, served.text
