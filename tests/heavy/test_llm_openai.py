"""The OpenAI-compatible backend over an httpx mock transport (parsing, retries/backoff, rate limit, cancel) and over
a loopback fake SSE server (streamed tool-call fragments assembled into calls)."""

import asyncio
import contextlib
import email.utils
import json
import re
import time

import httpx
import pytest

from heavy.llm.adjusted import with_priority
from heavy.llm.openai_backend import OpenAIBackend
from heavy.llm.openai_wire import parse_completion
from heavy.llm.ratelimit import RateLimiter
from heavy.llm.retry import RetryPolicy
from heavy.llm.think import ThinkSplitter, split_reasoning
from heavy.llm.types import LLMError, Meter, RetriableLLMError, Sampling, ToolCall, Usage
from tests.heavy.fakes import CountingLimiter

pytestmark = pytest.mark.anyio

FAST_RETRY = RetryPolicy(max_retries=3, backoff_s=0.001, backoff_max_s=0.01)
REPLY = {
    "choices": [{
        "finish_reason": "tool_calls",
        "message": {
            "role": "assistant", "content": "", "reasoning_content": "need to search",
            "tool_calls": [{"id": "c1", "type": "function",
                            "function": {"name": "search", "arguments": "{\"query\": \"kimi\"}"}}],
        },
    }],
    "usage": {"prompt_tokens": 50, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 32}},
}


def backend(handler, **kwargs):
    return OpenAIBackend("http://llm.test/v1", "m", api_key="k", transport=httpx.MockTransport(handler),
                         **{"retry": FAST_RETRY, **kwargs})


async def chat(llm, **kwargs):
    return await llm.chat([{"role": "user", "content": "hi"}], None, Sampling(temperature=0.7, seed=5),
                          max_tokens=32, **kwargs)


async def test_request_body_and_parsed_completion():
    seen = []

    def handler(request):
        seen.append((request, json.loads(request.content)))
        return httpx.Response(200, json=REPLY)

    completion = await chat(backend(handler), request_id="job:0:1", prefix_key="job")
    request, body = seen[0]
    assert request.url == "http://llm.test/v1/chat/completions" and request.headers["authorization"] == "Bearer k"
    assert request.headers["x-prefix-key"] == "job" and body["user"] == "job"
    assert (body["temperature"], body["seed"], body["max_tokens"]) == (0.7, 5, 32) and "priority" not in body
    assert completion.tool_calls[0].name == "search" and completion.tool_calls[0].arguments == {"query": "kimi"}
    assert completion.reasoning == "need to search" and completion.finish_reason == "tool_calls"
    assert (completion.usage.prompt_tokens, completion.usage.cached_prompt_tokens) == (50, 32)


async def test_asked_alternatives_are_requested_and_parsed_per_token():
    seen = []
    logprobs = {"content": [
        {"token": "Yes", "logprob": -0.2, "top_logprobs": [{"token": "Yes", "logprob": -0.2},
                                                           {"token": "No", "logprob": -1.8}]},
        {"token": ".", "logprob": -0.1, "top_logprobs": [{"token": ".", "logprob": -0.1}]}]}

    def handler(request):
        seen.append(json.loads(request.content))
        reply = {"choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content": "Yes."},
                              "logprobs": logprobs if seen[-1].get("logprobs") else None}]}
        return httpx.Response(200, json=reply)

    llm = backend(handler)
    completion = await llm.chat([{"role": "user", "content": "hi"}], None, Sampling(top_logprobs=2), max_tokens=2)
    assert (seen[0]["logprobs"], seen[0]["top_logprobs"]) == (True, 2)
    assert completion.top_logprobs == ((("Yes", -0.2), ("No", -1.8)), ((".", -0.1),))
    assert (await chat(llm)).top_logprobs == () and "logprobs" not in seen[1] and "top_logprobs" not in seen[1]


@pytest.mark.parametrize("content", ["<think>\nneed to search first\n</think>\n\nargparse",
                                     "need to search first</think>argparse"])  # the template opened the block
def test_reasoning_a_server_left_in_the_content_is_split_off(content):
    """A thinking model behind a server without a reasoning parser: the answer must not carry its thoughts."""
    completion = parse_completion({"choices": [{"message": {"role": "assistant", "content": content},
                                                "finish_reason": "stop"}]})
    assert (completion.content, completion.reasoning) == ("argparse", "need to search first")
    plain = parse_completion({"choices": [{"message": {"content": "a <think> tag, quoted"}, "finish_reason": "stop"}]})
    assert (plain.content, plain.reasoning) == ("a <think> tag, quoted", "")
    separate = parse_completion({"choices": [{"message": {"content": "</think>x", "reasoning_content": "r"}}]})
    assert (separate.content, separate.reasoning) == ("</think>x", "r")  # the server's own split stands


def test_a_think_block_cut_off_by_the_token_cap_is_reasoning_not_the_answer():
    """A thinking model stopped by max_tokens mid-thought (finish_reason "length"): its thoughts must not come back as
    the answer (a forced final answer reads the content), as the stream's splitter already treats them."""
    cut = parse_completion({"choices": [{"message": {"content": "<think>\nweighing the two pages"},
                                         "finish_reason": "length"}]})
    assert (cut.content, cut.reasoning) == ("", "weighing the two pages")


def test_a_think_tag_quoted_inside_an_answer_does_not_swallow_the_answer():
    """Only a block at the start (or a closing tag alone, the template having opened the block) is reasoning: an
    answer that names the tags keeps its text, as the stream keeps it."""
    text = "Qwen3 wraps its thoughts in <think>...</think> tags before the answer."
    quoted = parse_completion({"choices": [{"message": {"content": text}, "finish_reason": "stop"}]})
    assert (quoted.content, quoted.reasoning) == (text, "")


def test_alternatives_outside_what_servers_give_are_refused():
    with pytest.raises(ValueError, match="top_logprobs"):
        Sampling(top_logprobs=21)


async def test_retries_429_and_5xx_then_succeeds():
    statuses = iter([429, 503, 200])

    def handler(request):
        status = next(statuses)
        return httpx.Response(status, json=REPLY if status == 200 else {"error": "busy"},
                              headers={"retry-after": "0"})

    assert (await chat(backend(handler))).tool_calls


async def test_gives_up_after_the_retry_budget_and_never_retries_a_bad_request():
    calls = []

    def failing(status):
        def handler(request):
            calls.append(status)
            return httpx.Response(status, json={"error": "no"})
        return handler

    with pytest.raises(LLMError, match="giving up after 4 attempts"):
        await chat(backend(failing(500)))
    with pytest.raises(LLMError, match="HTTP 400"):
        await chat(backend(failing(400)))
    assert calls == [500] * 4 + [400]


@pytest.mark.parametrize("response", [
    httpx.Response(200, text="<html>upstream gateway</html>"),
    httpx.Response(200, json={"choices": [{"message": {"content": "", "tool_calls": [{"id": "c1"}]}}]}),
    httpx.Response(200, json={**REPLY, "usage": {"prompt_tokens": "many"}}),
])
async def test_a_malformed_reply_is_an_llm_error(response):
    # the agent loop keeps a trajectory's evidence and best answer on an LLMError; anything else crashed it
    with pytest.raises(LLMError, match="malformed completion"):
        await chat(backend(lambda request: response))


async def test_connection_errors_are_retried():
    attempts = []

    def handler(request):
        attempts.append(1)
        if len(attempts) < 2:
            raise httpx.ConnectError("refused")
        return httpx.Response(200, json=REPLY)

    assert (await chat(backend(handler))).tool_calls and len(attempts) == 2


async def test_shared_rate_limiter_caps_requests_in_flight():
    in_flight, peak = 0, 0

    async def handler(request):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        return httpx.Response(200, json=REPLY)

    llm = backend(handler, limiter=RateLimiter(requests_per_s=1000, max_concurrency=2))
    await asyncio.gather(*(chat(llm) for _ in range(8)))
    assert peak == 2


async def test_cancelling_the_caller_aborts_the_request():
    started, aborted = asyncio.Event(), asyncio.Event()

    async def handler(request):
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            aborted.set()
            raise
        return httpx.Response(200, json=REPLY)

    task = asyncio.create_task(chat(backend(handler)))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert aborted.is_set()


async def test_stream_yields_deltas_and_usage():
    lines = [
        {"choices": [{"delta": {"content": "Par"}, "finish_reason": None}]},
        {"choices": [{"delta": {"content": "is"}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}},
    ]
    sse = "".join(f"data: {json.dumps(line)}\n\n" for line in lines) + "data: [DONE]\n\n"
    llm = backend(lambda request: httpx.Response(200, text=sse, headers={"content-type": "text/event-stream"}))
    deltas = [d async for d in llm.stream([{"role": "user", "content": "hi"}], None, Sampling(), max_tokens=8)]
    assert "".join(d.content for d in deltas) == "Paris" and deltas[1].finish_reason == "stop"
    assert deltas[-1].usage.completion_tokens == 2


async def test_a_streamed_think_block_in_the_content_comes_out_as_reasoning():
    pieces = ["<thi", "nk>need to", " search</th", "ink>\n\nPar", "is"]
    lines = [{"choices": [{"delta": {"content": p}, "finish_reason": None}]} for p in pieces]
    lines[-1]["choices"][0]["finish_reason"] = "stop"
    sse = "".join(f"data: {json.dumps(line)}\n\n" for line in lines) + "data: [DONE]\n\n"
    llm = backend(lambda request: httpx.Response(200, text=sse, headers={"content-type": "text/event-stream"}))
    deltas = [d async for d in llm.stream([{"role": "user", "content": "hi"}], None, Sampling(), max_tokens=8)]
    assert "".join(d.content for d in deltas) == "Paris"
    assert "".join(d.reasoning for d in deltas) == "need to search"


@pytest.mark.parametrize("text", ["<think>plan it</think>\n\nthe answer", "  <think>a < b </th</think>x",
                                  "plain answer", "<thinking is not a tag", "<think>never closed", "  ", "",
                                  "quoting <think>x</think> tags"])
def test_the_think_splitter_gives_what_a_whole_reply_splits_however_the_stream_is_cut(text):
    whole_content, whole_reasoning = split_reasoning(text)
    for size in (1, 2, 3, 5, len(text) or 1):
        splitter, content, reasoning = ThinkSplitter(), "", ""
        for start in range(0, len(text), size):
            c, r = splitter.feed(text[start : start + size])
            content, reasoning = content + c, reasoning + r
        c, r = splitter.finish()
        assert (content + c, (reasoning + r).strip()) == (whole_content, whole_reasoning.strip()), size
    plain = ThinkSplitter()
    assert plain.feed("Hello") == ("Hello", "")  # an answer without a block is not held back


@contextlib.asynccontextmanager
async def fake_sse_server(events: list[str], left_open: asyncio.Event | None = None):
    """An HTTP server on 127.0.0.1 answering every POST with `events` as SSE, each written in two pieces split
    mid-line (so lines are reassembled across reads); yields its /v1 URL and the request bodies it received. With
    `left_open` it then keeps the stream open, and sets that event once the client closed the connection."""
    bodies = []

    async def handle(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"content-length:\s*(\d+)", head, re.IGNORECASE).group(1))
        bodies.append(json.loads(await reader.readexactly(length)))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
        for event in events:
            raw = event.encode()
            for piece in (raw[: len(raw) // 2], raw[len(raw) // 2:]):
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.001)
        if left_open is not None:
            while await reader.read(1024):  # until the client closes
                pass
            left_open.set()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", bodies


def sse(*chunks: dict, done: bool = True) -> list[str]:
    return [f"data: {json.dumps(chunk)}\n\n" for chunk in chunks] + (["data: [DONE]\n\n"] if done else [])


def call_fragment(index: int, *, call_id: str | None = None, name: str | None = None, arguments: str = "") -> dict:
    function = {"arguments": arguments} | ({"name": name} if name is not None else {})
    fragment = {"index": index, "function": function}
    return fragment | ({"id": call_id, "type": "function"} if call_id else {})


def delta_chunk(finish_reason: str | None = None, **delta) -> dict:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


async def stream_all(url: str) -> list:
    llm = OpenAIBackend(url, "m", retry=FAST_RETRY)
    try:
        return [d async for d in llm.stream([{"role": "user", "content": "hi"}], [{"type": "function"}],
                                            Sampling(), max_tokens=8, prefix_key="job")]
    finally:
        await llm.aclose()


async def test_stream_assembles_fragmented_tool_calls_on_the_finishing_delta():
    events = sse(
        delta_chunk(role="assistant", content="Let me look. "),
        delta_chunk(tool_calls=[call_fragment(0, call_id="call_a", name="search")]),
        delta_chunk(tool_calls=[call_fragment(0, arguments='{"query": "ed')]),
        delta_chunk(tool_calls=[call_fragment(1, call_id="call_b", name="open_")]),  # the name comes in pieces too
        delta_chunk(tool_calls=[call_fragment(0, arguments=' wood"}'), call_fragment(1, name="page")]),  # interleaved
        delta_chunk(tool_calls=[call_fragment(1, arguments='{"url": "http://x.test/1"}')]),
        delta_chunk("tool_calls"),
        {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}},
    )
    async with fake_sse_server(events) as (url, bodies):
        deltas = await stream_all(url)
    assert bodies[0]["stream"] is True and bodies[0]["stream_options"] == {"include_usage": True}
    assert "".join(d.content for d in deltas) == "Let me look. "
    carrying = [d for d in deltas if d.tool_calls]
    assert len(carrying) == 1 and carrying[0].finish_reason == "tool_calls"
    assert carrying[0].tool_calls == (ToolCall("call_a", "search", {"query": "ed wood"}),
                                      ToolCall("call_b", "open_page", {"url": "http://x.test/1"}))
    assert deltas[-1].usage.prompt_tokens == 9


async def test_stream_without_finish_reason_still_delivers_whole_calls_at_done():
    events = sse(delta_chunk(tool_calls=[call_fragment(0, name="search", arguments='{"query"')]),
                 delta_chunk(tool_calls=[call_fragment(0, arguments=': "kimi"}')]))
    async with fake_sse_server(events) as (url, _):
        deltas = await stream_all(url)
    assert [d.tool_calls for d in deltas if d.tool_calls] == [(ToolCall("call_0", "search", {"query": "kimi"}),)]


async def test_stream_errors_in_band_and_truncated_streams_raise():
    error = {"error": {"message": "engine died", "type": "server_error"}}
    async with fake_sse_server(sse(delta_chunk(content="a"), error, done=False)) as (url, _):
        with pytest.raises(LLMError, match="engine died"):
            await stream_all(url)
    cut_short = delta_chunk(tool_calls=[call_fragment(0, call_id="c", name="search", arguments='{"qu')])
    truncated = sse(cut_short, done=False)
    async with fake_sse_server(truncated) as (url, _):
        with pytest.raises(RetriableLLMError, match="before the choice finished"):
            await stream_all(url)


async def test_a_stream_closed_early_frees_its_slot_and_closes_its_request_at_once():
    closed_by_client = asyncio.Event()
    async with fake_sse_server(sse(delta_chunk(content="Par"), done=False), closed_by_client) as (url, _):
        limiter = CountingLimiter()
        llm = OpenAIBackend(url, "m", retry=FAST_RETRY, limiter=limiter)
        try:
            deltas = llm.stream([{"role": "user", "content": "hi"}], None, Sampling(), max_tokens=8)
            assert (await anext(deltas)).content == "Par" and limiter.held == 1
            await deltas.aclose()
            assert limiter.held == 0
            await asyncio.wait_for(closed_by_client.wait(), 10)
        finally:
            await llm.aclose()


async def test_a_stream_aborted_in_flight_has_counted_the_chunks_it_received():
    """One completion token a chunk of generated text or a call's fragment (the role chunk carries none); the prompt
    is not counted (the caller estimates it)."""
    chunks = (delta_chunk(role="assistant", content=""), delta_chunk(reasoning_content="Hm"),
              delta_chunk(content="Par"), delta_chunk(tool_calls=[call_fragment(0, call_id="c", name="f")]))
    async with fake_sse_server(sse(*chunks, done=False), asyncio.Event()) as (url, _):
        llm, meter = OpenAIBackend(url, "m", retry=FAST_RETRY), Meter()
        try:
            deltas = llm.stream([{"role": "user", "content": "hi"}], None, Sampling(), max_tokens=8, meter=meter)
            while meter.usage.completion_tokens < 3:
                await anext(deltas)
            await deltas.aclose()
        finally:
            await llm.aclose()
    assert (meter.sent, meter.usage) == (True, Usage(completion_tokens=3))


async def test_a_streams_usage_chunk_is_what_its_meter_holds():
    chunks = (delta_chunk(content="Paris"), {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 1}})
    async with fake_sse_server(sse(*chunks)) as (url, _):
        llm, meter = OpenAIBackend(url, "m", retry=FAST_RETRY), Meter()
        try:
            [d async for d in llm.stream([{"role": "user", "content": "hi"}], None, Sampling(), max_tokens=8,
                                         meter=meter)]
        finally:
            await llm.aclose()
    assert meter.usage == Usage(prompt_tokens=12, completion_tokens=1)


def test_backoff_grows_and_respects_retry_after():
    policy = RetryPolicy(max_retries=5, backoff_s=1, backoff_max_s=8)
    assert 0.5 <= policy.delay(0, None) <= 1 and 4 <= policy.delay(3, None) <= 8
    assert policy.delay(0, 6.0) == 6.0 and policy.delay(0, 60.0) == 8


@pytest.mark.parametrize("form", ["seconds", "http-date"])
async def test_a_retry_after_in_either_form_is_read(form):
    wait = time.time() + 100
    header = "100" if form == "seconds" else email.utils.formatdate(wait, usegmt=True)
    llm = backend(lambda request: httpx.Response(503, json={"error": "busy"}, headers={"retry-after": header}),
                  retry=RetryPolicy(max_retries=0))
    with pytest.raises(LLMError) as refused:
        await chat(llm)
    assert 90 < refused.value.__cause__.retry_after_s <= 100


async def test_a_jobs_priority_is_sent_only_when_set():
    bodies = []

    def handler(request):
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json=REPLY)

    await chat(with_priority(backend(handler), 3))
    assert bodies[0]["priority"] == 3 and bodies[0]["seed"] == 5


async def test_a_trajectory_over_a_thinking_api_that_wants_reasoning_back_with_every_call():
    """Moonshot's rule for its thinking models: an assistant turn with tool calls must carry its reasoning_content,
    or the request is a 400. The trajectory's own opening search and every call the model made go back with it."""
    from heavy.agent import Trajectory, TrajectoryLimits, TrajectorySpec
    from heavy.tools.base import ToolExecutor
    from tests.heavy.fakes import DictSearch

    def handler(request):
        messages = json.loads(request.content)["messages"]
        for i, message in enumerate(messages):
            if message["role"] == "assistant" and message.get("tool_calls") and not message.get("reasoning_content"):
                error = f"thinking is enabled but reasoning_content is missing in assistant tool call message at {i}"
                return httpx.Response(400, json={"error": {"message": error, "type": "invalid_request_error"}})
        turns = sum(m["role"] == "assistant" for m in messages)
        name, arguments = (("search", {"query": "eiffel tower 1889"}) if turns < 2 else
                           ("answer", {"answer": "1889", "sources": ["http://corpus/eiffel"]}))
        call = {"id": f"functions.{name}:{turns}", "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments)}}
        message = {"role": "assistant", "content": "", "reasoning_content": f"turn {turns}: {name} next",
                   "tool_calls": [call]}
        return httpx.Response(200, json={"choices": [{"finish_reason": "tool_calls", "message": message}],
                                         "usage": {"prompt_tokens": 60, "completion_tokens": 9}})

    pages = {"http://corpus/eiffel": "The Eiffel Tower was finished in 1889."}
    spec = TrajectorySpec(job_id="j", index=0, question="When was the Eiffel Tower finished?",
                          allowed_tools=frozenset({"search"}), sampling=Sampling(),
                          limits=TrajectoryLimits(max_steps=4))
    result = await Trajectory(spec, backend(handler), ToolExecutor([DictSearch(pages)])).run()
    assert (result.answer, result.stop_reason) == ("1889", "answered")
