"""`openai` backend: any OpenAI-compatible /chat/completions endpoint (vLLM, SGLang, Moonshot, `runtime serve`).

httpx async client; retries with backoff on 429/5xx/connection errors; one `RateLimiter` shared by all callers
of this backend object; cancelling the awaiting task closes the HTTP request, which servers treat as an abort.
`prefix_key` is sent as the `user` field and an `X-Prefix-Key` header so routers can keep a job on one replica.

A request whose prompt and `max_tokens` overflow the server's context is a 400 on OpenAI, vLLM, SGLang and
`runtime serve` (none cuts the completion to fit). heavy sizes prompts by an estimate against its own
`HEAVY_CONTEXT_TOKENS`, which a server may not share, so such a 400 is asked again once with `max_tokens` cut to the
room the error states (the reply then ends with finish_reason "length", which the trajectory and report handle),
unless that room is under half the ask: such a reply is mostly lost (a thinking model's all reasoning), and the
error goes to the caller, which can do better (a trajectory fits its prompt again by the context the error states).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx

from heavy.llm.openai_wire import ToolCallAssembler, count_chunk, load_chunk, parse_completion, parse_delta
from heavy.llm.ratelimit import RateLimiter
from heavy.llm.retry import RetryPolicy, ServerSeen, with_retries
from heavy.llm.think import ThinkSplitter
from heavy.llm.types import (
    Completion,
    CompletionDelta,
    ContextLengthError,
    LLMError,
    Message,
    Meter,
    RetriableLLMError,
    Sampling,
    Usage,
)
from heavy.retry_after import retry_after_seconds

_RETRIABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
_GATEWAY_STATUS = {502, 503, 504}  # a proxy's, or a server's still starting: no server answered
# a context-length 400: the context size, and the prompt's tokens in OpenAI's and older vLLM's words ("(P in the
# messages, C in the completion)"), newer vLLM's ("your request has P input tokens", "your prompt contains P input
# tokens"), SGLang's ("P tokens from the input messages"), and OpenAI's and `runtime serve`'s for a prompt that
# alone fills the context ("your messages resulted in P tokens")
_CONTEXT_SIZE = re.compile(r"maximum context length (?:is|of) (\d+) tokens")
_PROMPT_SIZE = re.compile(r"\((\d+) in the (?:messages|prompt)|(?:has|contains) (\d+) input tokens"
                          r"|(\d+) tokens from the input|resulted in (\d+) tokens")

MIN_ROOM_SHARE = 0.5  # of max_tokens: a refusal stating less room is the caller's to handle, not asked again

log = logging.getLogger(__name__)


def _within_room(body: dict, error: ContextLengthError) -> dict:
    """`body` asking for no more than the room the server stated; `error` again when that room is under
    MIN_ROOM_SHARE of the ask (or none is stated)."""
    if error.room is None or not max(1.0, body["max_tokens"] * MIN_ROOM_SHARE) <= error.room < body["max_tokens"]:
        raise error
    log.warning("the server's context is smaller than heavy assumed: max_tokens %d cut to the %d tokens left (%s)",
                body["max_tokens"], error.room, error)
    return {**body, "max_tokens": error.room}


class OpenAIBackend:
    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str = "",
        timeout_s: float = 120.0,
        retry: RetryPolicy | None = None,
        limiter: RateLimiter | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.model = model
        self.retry = retry or RetryPolicy()
        self.limiter = limiter or RateLimiter(requests_per_s=20.0, max_concurrency=16)
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s, transport=transport
        )
        self._served_context: asyncio.Future[int | None] | None = None  # read once, by the first to ask
        self._server = ServerSeen()  # a server that has answered and fails now is restarting (RetryPolicy.outage_s)

    async def served_context(self) -> int | None:
        """The server's context for this model: `max_model_len` in GET /models, as vLLM, SGLang and `runtime serve`
        report it, read once it answers; None when it reports none (OpenAI, Moonshot) or the read fails (one that
        found no server, still loading, is made again by the next caller)."""
        if self._served_context is None:  # every job's read: not in this one's context (its log lines name it)
            self._served_context = asyncio.get_running_loop().create_task(self._read_served_context(),
                                                                          context=contextvars.Context())
        return await asyncio.shield(self._served_context)  # one caller cancelled leaves the read to the others

    async def _read_served_context(self) -> int | None:
        try:
            response = await self._client.get("/models")
            response.raise_for_status()
            models = response.json()["data"]
        except httpx.TransportError as exc:  # no server to answer (yet)
            log.info("the server's context is unknown for now (GET /models: %s)", exc)
            self._served_context = None
            return None
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            log.info("the server reports no context (GET /models: %s); HEAVY_CONTEXT_TOKENS stands", exc)
            return None
        entry = next((m for m in models if isinstance(m, dict) and m.get("id") == self.model), None)
        served = (entry or {}).get("max_model_len")
        return served if isinstance(served, int) and served > 0 else None

    def _body(self, messages, tools, sampling: Sampling, max_tokens, stop, prefix_key, stream: bool) -> dict:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "stream": stream,
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.priority:  # vLLM takes it when serving with --scheduling-policy priority (and refuses it else)
            body["priority"] = sampling.priority
        if sampling.top_logprobs:
            body["logprobs"], body["top_logprobs"] = True, sampling.top_logprobs
        if tools:
            body["tools"] = tools
        if stop:
            body["stop"] = stop
        if prefix_key:
            body["user"] = prefix_key
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def _headers(self, request_id: str | None, prefix_key: str | None) -> dict[str, str]:
        headers = {}
        if request_id:
            headers["X-Request-Id"] = request_id
        if prefix_key:
            headers["X-Prefix-Key"] = prefix_key
        return headers

    async def chat(
        self,
        messages: list[Message],
        tools: list[dict] | None,
        sampling: Sampling,
        *,
        max_tokens: int,
        stop: list[str] | None = None,
        request_id: str | None = None,
        prefix_key: str | None = None,
        meter: Meter | None = None,
    ) -> Completion:
        """One completion; an aborted one has `meter.sent` once it was posted, and counts nothing (its server says
        nothing until it answers)."""
        body = self._body(messages, tools, sampling, max_tokens, stop, prefix_key, stream=False)
        headers = self._headers(request_id, prefix_key)
        meter = meter or Meter()

        async def attempt(body: dict) -> Completion:
            async with self.limiter.slot():
                meter.sent = True
                try:
                    response = await self._client.post("/chat/completions", json=body, headers=headers)
                except (httpx.TransportError, httpx.TimeoutException) as exc:
                    # asked again; the server worked on a reply that timed out: charged as an aborted one is
                    meter.attempt_failed(Usage(), unanswered=isinstance(exc, httpx.ReadTimeout))
                    raise RetriableLLMError(f"{type(exc).__name__}: {exc}", no_server=True) from exc
            if response.status_code < 500:
                self._server.answered()
            try:
                _raise_for_status(response)
            except RetriableLLMError:  # refused (429, 5xx) and asked again: nothing to charge
                meter.attempt_failed(Usage())
                raise
            try:
                payload = response.json()
            except ValueError as exc:  # a proxy's error page, a cut body
                raise LLMError(f"malformed completion: {response.text[:300]}") from exc
            return parse_completion(payload)

        what = f"chat {request_id or ''}".strip()
        try:
            return await with_retries(lambda: attempt(body), self.retry, what=what, server=self._server)
        except ContextLengthError as exc:
            shrunk = _within_room(body, exc)
            return await with_retries(lambda: attempt(shrunk), self.retry, what=what, server=self._server)

    async def stream(
        self,
        messages: list[Message],
        tools: list[dict] | None,
        sampling: Sampling,
        *,
        max_tokens: int,
        stop: list[str] | None = None,
        request_id: str | None = None,
        prefix_key: str | None = None,
        meter: Meter | None = None,
    ) -> AsyncIterator[CompletionDelta]:
        """Server-sent deltas, tool-call fragments assembled into whole calls (see `CompletionDelta`).

        Not retried. HTTP errors raise as in `chat`; a failed connection, or a stream that ends before its choice
        finished, raises RetriableLLMError; an error reported inside the stream, or a malformed chunk, LLMError.
        Closing it (`aclose`, or `contextlib.aclosing` around it) closes the request and frees its limiter slot at
        once, not when the abandoned generator is collected. `meter` counts what it received: the usage a chunk
        reports, else one completion token a chunk that carries generated text or a call's fragment."""
        body = self._body(messages, tools, sampling, max_tokens, stop, prefix_key, stream=True)
        meter = meter or Meter()
        try:
            async with contextlib.aclosing(self._stream(body, request_id, prefix_key, meter)) as deltas:
                async for delta in deltas:
                    yield delta
        except ContextLengthError as exc:  # refused before its first event: nothing was yielded
            async with contextlib.aclosing(self._stream(_within_room(body, exc), request_id, prefix_key,
                                                        meter)) as deltas:
                async for delta in deltas:
                    yield delta

    async def _stream(self, body: dict, request_id: str | None, prefix_key: str | None, meter: Meter
                      ) -> AsyncIterator[CompletionDelta]:
        headers = self._headers(request_id, prefix_key)
        calls, finished, thinking = ToolCallAssembler(), False, ThinkSplitter()
        try:
            async with self.limiter.slot(), self._client.stream(
                "POST", "/chat/completions", json=body, headers=headers
            ) as response:
                meter.sent = True
                if response.status_code < 500:
                    self._server.answered()
                if response.status_code >= 400:
                    await response.aread()
                    _raise_for_status(response)
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[len("data:"):].strip()
                    if data == "[DONE]":
                        finished = True
                        break
                    chunk = load_chunk(data)
                    count_chunk(chunk, meter)
                    delta = _split_thinking(parse_delta(chunk, calls), thinking)
                    finished = finished or delta.finish_reason is not None
                    yield delta
        except (httpx.TransportError, httpx.TimeoutException) as exc:
            raise RetriableLLMError(f"stream {request_id or ''}: {type(exc).__name__}: {exc}") from exc
        if not finished:
            raise RetriableLLMError(f"stream {request_id or ''}: the server closed it before the choice finished")
        rest, reasoning = thinking.finish()  # [DONE] without a finish_reason: what the splitter still holds
        if rest or reasoning:
            yield CompletionDelta(content=rest, reasoning=reasoning)
        if calls.pending:  # [DONE] without a finish_reason: the calls are whole, deliver them
            yield CompletionDelta(tool_calls=calls.take())

    async def aclose(self) -> None:
        await self._client.aclose()


def _split_thinking(delta: CompletionDelta, thinking: ThinkSplitter) -> CompletionDelta:
    """The delta with reasoning its server left in the content moved to `reasoning` (heavy/llm/think.py)."""
    if delta.reasoning:
        thinking.server_splits()
    content, reasoning = thinking.feed(delta.content)
    if delta.finish_reason is not None:
        rest, more = thinking.finish()
        content, reasoning = content + rest, reasoning + more
    return replace(delta, content=content, reasoning=delta.reasoning + reasoning)


def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    message = f"HTTP {response.status_code}: {response.text[:300]}"
    if response.status_code in _RETRIABLE_STATUS:
        raise RetriableLLMError(message, retry_after_s=retry_after_seconds(response.headers.get("retry-after")),
                                no_server=response.status_code in _GATEWAY_STATUS)
    if response.status_code == 400 and (context := _CONTEXT_SIZE.search(response.text)):
        prompt = _PROMPT_SIZE.search(response.text)
        counted = int(next(g for g in prompt.groups() if g)) if prompt else None
        room = None if counted is None else int(context.group(1)) - counted
        raise ContextLengthError(message, prompt_tokens=counted, room=room)
    raise LLMError(message)
