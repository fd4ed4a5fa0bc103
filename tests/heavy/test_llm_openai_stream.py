"""The OpenAI-compatible backend's streamed replies: deltas and usage, a think block split off as reasoning however
the stream is cut, and over a loopback fake SSE server, tool-call fragments assembled into calls, errors in band,
truncated and abandoned streams and what their meters counted. Whole replies, retries and limits: test_llm_openai.py."""

import asyncio
import contextlib
import json
import re

import httpx
import pytest

from heavy.llm.openai_backend import OpenAIBackend
from heavy.llm.think import ThinkSplitter, split_reasoning
from heavy.llm.types import LLMError, Meter, RetriableLLMError, Sampling, ToolCall, Usage
from tests.heavy.fakes import CountingLimiter
from tests.heavy.test_llm_openai import FAST_RETRY, backend

pytestmark = pytest.mark.anyio


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
