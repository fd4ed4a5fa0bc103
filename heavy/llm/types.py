"""The LLM contract of heavy: one chat call in, one `Completion` out, whatever serves the model.

Messages are OpenAI-style dicts (`role`, `content`, and for assistant turns `tool_calls`; tool turns carry
`tool_call_id`). Tools are OpenAI function specs. Backends: `openai` (any compatible endpoint) and `runtime`
(our engine in process, or our Ray replicas behind the router); tests use a scripted backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Message = dict[str, Any]


class LLMError(Exception):
    """A request failed for good (bad request, retries exhausted, malformed reply)."""


class RetriableLLMError(LLMError):
    """A request failed in a way worth retrying (429, 5xx, connection reset). `no_server`: no server answered it (no
    connection or response, a gateway's 502, 503 or 504): what a server restarting looks like (RetryPolicy.outage_s)."""

    def __init__(self, message: str, retry_after_s: float | None = None, *, no_server: bool = False) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.no_server = no_server


class ContextLengthError(LLMError):
    """The server refused a prompt and `max_tokens` past its context. `prompt_tokens`: what it counted in the prompt,
    `room`: the completion tokens it says are left (each None when it does not say)."""

    def __init__(self, message: str, *, prompt_tokens: int | None, room: int | None) -> None:
        super().__init__(message)
        self.prompt_tokens, self.room = prompt_tokens, room


MAX_TOP_LOGPROBS = 20  # OpenAI's limit, and our runtime's


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    top_logprobs: int = 0  # return this many alternatives of each generated token, with their log-probabilities
    priority: int = 0  # scheduling on the model server: lower first (heavy/llm/adjusted.py sets a job's)

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {self.top_logprobs}")


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0  # part of prompt_tokens served from the prefix cache

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cached_prompt_tokens=self.cached_prompt_tokens + other.cached_prompt_tokens,
        )


@dataclass
class Meter:
    """What a request has spent while in flight, kept by its backend for a caller that aborts it (the server did that
    work, and it is charged). `sent`: the request reached the server or engine; `usage`: the tokens the backend
    counted so far (the engine's figures; a stream's usage, else one completion token a chunk). A prompt it cannot
    count is left 0: a non-streamed request's server says nothing until it answers. Both are the attempt's in flight;
    a retried request's failed attempts are in `earlier` (what the backend counted of them) and `unanswered` (how many
    its server worked on and never answered: a reply that timed out), charged with it (agent/context.py)."""

    sent: bool = False
    usage: Usage = field(default_factory=Usage)
    earlier: Usage = field(default_factory=Usage)
    unanswered: int = 0

    def attempt_failed(self, spent: Usage, *, unanswered: bool = False) -> None:
        """The attempt in flight failed and may be tried again: what it `spent` stays charged; the next one starts
        unsent (a stop while the backend waits to retry aborts nothing more)."""
        self.earlier, self.unanswered = self.earlier + spent, self.unanswered + unanswered
        self.sent, self.usage = False, Usage()


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Completion:
    content: str
    reasoning: str = ""  # the <think> part, when the model has one
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str = "stop"  # stop | length | tool_calls
    usage: Usage = field(default_factory=Usage)
    # with Sampling.top_logprobs: per generated token, its alternatives as (token text, log-probability), best
    # first; empty when not asked for or the backend does not give them
    top_logprobs: tuple[tuple[tuple[str, float], ...], ...] = ()


@dataclass(frozen=True)
class CompletionDelta:
    """One streamed piece; the last delta carries `finish_reason` and `usage`.

    `tool_calls` holds the calls this delta completed, each whole (name and decoded arguments) and each in exactly
    one delta of a stream, so a consumer collects them over the stream. Where they come depends on the backend:
    the `openai` backend assembles the servers' `delta.tool_calls` fragments and emits them on the delta that
    finishes the choice (fragments do not say when a call is complete); the `runtime` backend emits each call on
    the delta whose text closes it, and leaves the call's markup out of `content`.
    """

    content: str = ""
    reasoning: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    tool_calls: tuple[ToolCall, ...] = ()


@runtime_checkable
class LLMBackend(Protocol):
    name: str

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
        """One completion. Cancelling the awaiting task aborts the request on the server or engine; `meter` then
        holds what it had spent."""
        ...

    def stream(
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
    ) -> AsyncIterator[CompletionDelta]: ...

    async def aclose(self) -> None: ...
