"""Compiling a structured-output spec is bounded (runtime/server/compile_gate.py): a spec past the size cap is a 400
before anything compiles; a compile that has not ended by the gate's deadline is a 400 naming the field, and one that
never got a compile thread (all held) is a 503; once the threads are free the same spec is served."""

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from runtime.server.compile_gate import MAX_SPEC_CHARS, CompileGate
from tests.runtime.test_server import MODEL_NAME, PROMPT, USER, running_server, server, tiny_engine

__all__ = ["server"]  # the module's server, for the tests below

ROUTES = [("chat/completions", {"messages": USER}), ("completions", {"prompt": PROMPT})]


@pytest.mark.parametrize("route, body", ROUTES)
@pytest.mark.parametrize("field, spec", [
    ("guided_regex", "a" * (MAX_SPEC_CHARS + 1)),
    ("guided_grammar", 'root ::= "' + "a" * MAX_SPEC_CHARS + '"'),
    ("guided_json", {"type": "string", "description": "a" * MAX_SPEC_CHARS}),
])
def test_a_spec_past_the_size_cap_is_a_400_before_it_compiles(server, monkeypatch, route, body, field, spec):
    def compiled(params):
        raise AssertionError("the spec was compiled")

    monkeypatch.setattr(server[1].engine, "check_structured", compiled)
    response = httpx.post(f"{server[0]}/v1/{route}", json={"model": MODEL_NAME, **body, field: spec,
                                                            "max_tokens": 2}, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field and f"at most {MAX_SPEC_CHARS}" in error["message"]


@pytest.mark.parametrize("route, body", ROUTES)
def test_a_compile_past_the_deadline_is_a_400_and_one_without_a_thread_a_503(route, body):
    """One compile thread and a short wait; the compile is held until the test lets it end, so the outcome does not
    depend on how fast anything runs."""
    engine, released = tiny_engine(), threading.Event()
    check = engine.engine.check_structured

    def held_check(params):
        if params.structured is not None:
            assert released.wait(timeout=60), "the held compile was never let go"
        return check(params)

    engine.engine.check_structured = held_check
    with running_server(engine, MODEL_NAME, compiles=CompileGate(workers=1, timeout_s=0.5)) as url:
        def post(**extra) -> httpx.Response:
            return httpx.post(f"{url}/v1/{route}", json={"model": MODEL_NAME, **body, **extra, "max_tokens": 2},
                              timeout=60)
        try:
            slow = post(guided_regex="a+")
            assert slow.status_code == 400, slow.text
            assert slow.json()["error"]["param"] == "guided_regex"
            assert "did not compile within 0.5 s" in slow.json()["error"]["message"]
            queued = post(guided_json={"type": "string"})  # the one thread still runs the held compile
            assert queued.status_code == 503, queued.text
            assert queued.json()["error"]["type"] == "server_error"
        finally:
            released.set()
        served = post(guided_regex="a+")
        assert served.status_code == 200, served.text


@pytest.mark.parametrize("route, body", ROUTES)
def test_requests_waiting_for_a_compile_leave_the_loops_threads_to_other_requests(route, body):
    """The one compile thread is held, and as many structured requests as the event loop has default threads wait
    for it: a plain request is still tokenized (on one of those threads) and served. They waited on the threads, so
    no request was served until the held compile ended."""
    engine, released, checked = tiny_engine(), threading.Event(), []
    check, check_request = engine.engine.check_structured, engine.engine.check_request
    loop_threads = min(32, (os.cpu_count() or 1) + 4)  # asyncio's default executor, which to_thread runs on

    def held_check(params):
        if params.structured is not None:
            assert released.wait(timeout=60), "the held compile was never let go"
        return check(params)

    def counted_check_request(prompt_ids):  # a request's step just before its compile
        checked.append(prompt_ids)
        return check_request(prompt_ids)

    engine.engine.check_structured, engine.engine.check_request = held_check, counted_check_request
    with running_server(engine, MODEL_NAME, compiles=CompileGate(workers=1, timeout_s=120)) as url:
        def post(**extra) -> httpx.Response:
            return httpx.post(f"{url}/v1/{route}", json={"model": MODEL_NAME, **body, **extra, "max_tokens": 2},
                              timeout=60)  # a bound on a hang, not a measure
        with ThreadPoolExecutor(loop_threads) as clients:
            try:
                structured = [clients.submit(post, guided_regex="a+") for _ in range(loop_threads)]
                deadline = time.monotonic() + 60
                while len(checked) < loop_threads:  # each at the gate, the first compiling
                    assert time.monotonic() < deadline, f"{len(checked)} requests reached the compile"
                    time.sleep(0.05)
                plain = post()
                assert plain.status_code == 200, plain.text
            finally:
                released.set()
            assert [r.result().status_code for r in structured] == [200] * loop_threads
