"""The OpenAI backend against servers that refuse a prompt plus `max_tokens` past their context (OpenAI, vLLM, SGLang
and `runtime serve` all answer 400; none cuts the completion to fit): it asks once more for the room the error
states when that is at least half the ask, else leaves the refusal to its caller. Over a loopback stand-in that
applies vLLM's rule in each server's words, and over our own server."""

import asyncio
import contextlib
import json
import re
from collections.abc import Callable

import pytest

from heavy.llm.openai_backend import OpenAIBackend
from heavy.llm.retry import RetryPolicy
from heavy.llm.types import ContextLengthError, LLMError, Sampling
from tests.runtime.test_server import MODEL_NAME, server

__all__ = ["server"]  # the tiny model's server (tests/runtime), for the last test

pytestmark = pytest.mark.anyio

CONTEXT, PROMPT_TOKENS = 300, 200
FAST_RETRY = RetryPolicy(max_retries=2, backoff_s=0.001, backoff_max_s=0.01)
MESSAGES = [{"role": "user", "content": "hi"}]
REFUSALS = {  # (context, prompt tokens, max_tokens) -> each server's 400 message
    "openai, vllm < 0.10": lambda n, p, c: (
        f"This model's maximum context length is {n} tokens. However, you requested {p + c} tokens ({p} in the "
        f"messages, {c} in the completion). Please reduce the length of the messages or completion."),
    "vllm 0.10": lambda n, p, c: (
        f"'max_tokens' or 'max_completion_tokens' is too large: {c}. This model's maximum context length is {n} "
        f"tokens and your request has {p} input tokens ({c} > {n} - {p})."),
    "vllm renderer": lambda n, p, c: (
        f"This model's maximum context length is {n} tokens. However, you requested {c} output tokens and your "
        f"prompt contains {p} input tokens, for a total of {p + c} tokens."),
    "sglang": lambda n, p, c: (
        f"Requested token count exceeds the model's maximum context length of {n} tokens. You requested a total of "
        f"{p + c} tokens: {p} tokens from the input messages and {c} tokens for the completion."),
}


def _reply(body: dict) -> tuple[str, bytes]:
    """What a server that fits the request answers: `max_tokens` tokens, cut at that limit."""
    if body["stream"]:
        chunks = [{"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]},
                  {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}]
        return "text/event-stream", "".join(f"data: {json.dumps(c)}\n\n" for c in chunks).encode() + (
            b"data: [DONE]\n\n")
    reply = {"choices": [{"message": {"role": "assistant", "content": "x"}, "finish_reason": "length"}],
             "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": body["max_tokens"]}}
    return "application/json", json.dumps(reply).encode()


@contextlib.asynccontextmanager
async def strict_server(refusal, prompt_tokens: int | Callable[[dict], int] = PROMPT_TOKENS, *,
                        context: int = CONTEXT, reply: Callable[[dict], tuple[str, bytes]] = _reply):
    """An OpenAI-compatible stand-in on 127.0.0.1 with a `context`-token context and every prompt `prompt_tokens`
    long (or as long as that function of the request's body counts), refusing max_tokens past the room as vLLM
    does, else answering `reply(body)`; yields its /v1 URL and the bodies it received."""
    bodies = []
    counted = prompt_tokens if callable(prompt_tokens) else lambda body: prompt_tokens

    async def handle(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"GET /v1/models"):  # OpenAI's listing: no max_model_len
            payload = json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                         b"connection: close\r\n\r\n%b" % (len(payload), payload))
            await writer.drain()
            writer.close()
            return
        length = int(re.search(rb"content-length:\s*(\d+)", head, re.IGNORECASE).group(1))
        body = json.loads(await reader.readexactly(length))
        bodies.append(body)
        if counted(body) + body["max_tokens"] > context:
            status = "400 Bad Request"
            error = {"message": refusal(context, counted(body), body["max_tokens"]), "type": "BadRequestError",
                     "param": None, "code": 400}
            kind, payload = "application/json", json.dumps({"error": error}).encode()
        else:
            status, (kind, payload) = "200 OK", reply(body)
        writer.write(f"HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {len(payload)}\r\n"
                     f"connection: close\r\n\r\n".encode() + payload)
        await writer.drain()
        writer.close()

    listening = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with listening:
        yield f"http://127.0.0.1:{listening.sockets[0].getsockname()[1]}/v1", bodies


@pytest.mark.parametrize("server_words", REFUSALS)
@pytest.mark.parametrize("streamed", [False, True])
async def test_max_tokens_past_the_servers_room_is_asked_again_for_the_room_left(server_words, streamed):
    async with strict_server(REFUSALS[server_words]) as (url, bodies):
        llm = OpenAIBackend(url, "m", retry=FAST_RETRY)
        try:
            if streamed:
                deltas = [d async for d in llm.stream(MESSAGES, None, Sampling(), max_tokens=150)]
                finish = deltas[-1].finish_reason
            else:
                finish = (await llm.chat(MESSAGES, None, Sampling(), max_tokens=150)).finish_reason
        finally:
            await llm.aclose()
    assert [b["max_tokens"] for b in bodies] == [150, CONTEXT - PROMPT_TOKENS]
    assert finish == "length"


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_room_under_half_the_ask_is_the_callers_refusal_not_a_cut_reply(streamed):
    """Such a reply would be mostly lost (a thinking model's all reasoning): a trajectory fits its prompt again by the
    context the refusal states instead (tests/heavy/test_trajectory_budgets.py)."""
    async with strict_server(REFUSALS["vllm 0.10"]) as (url, bodies):
        llm = OpenAIBackend(url, "m", retry=FAST_RETRY)
        try:
            with pytest.raises(ContextLengthError) as refused:
                if streamed:
                    [d async for d in llm.stream(MESSAGES, None, Sampling(), max_tokens=201)]
                else:
                    await llm.chat(MESSAGES, None, Sampling(), max_tokens=201)
        finally:
            await llm.aclose()
    assert [b["max_tokens"] for b in bodies] == [201]
    assert (refused.value.prompt_tokens, refused.value.room) == (PROMPT_TOKENS, CONTEXT - PROMPT_TOKENS)


@pytest.mark.parametrize("prompt_tokens", [CONTEXT, CONTEXT + 50])
async def test_a_prompt_that_leaves_no_room_is_an_error_asked_once(prompt_tokens):
    async with strict_server(REFUSALS["openai, vllm < 0.10"], prompt_tokens) as (url, bodies):
        llm = OpenAIBackend(url, "m", retry=FAST_RETRY)
        try:
            with pytest.raises(LLMError, match="maximum context length"):
                await llm.chat(MESSAGES, None, Sampling(), max_tokens=20)
        finally:
            await llm.aclose()
    assert len(bodies) == 1


async def test_over_our_own_server_a_too_large_max_tokens_gets_the_rest_of_the_context(server):
    """`runtime serve` refuses it as vLLM does; the backend's second ask fills the context to its end (the room
    the tiny prompt leaves of its 256 tokens is more than half the ask)."""
    llm = OpenAIBackend(server[0] + "/v1", MODEL_NAME, retry=FAST_RETRY)
    try:
        completion = await llm.chat(MESSAGES, None, Sampling(temperature=0), max_tokens=400)
    finally:
        await llm.aclose()
    usage = completion.usage
    assert 0 < usage.completion_tokens <= server[1].engine.max_model_len - usage.prompt_tokens
