"""A shared backend seen through one job's needs, on every request the job makes:

- its priority: the runtime schedules lower first (vLLM's convention), so an interactive job's trajectories and report
  pass need not queue behind a batch job's on a shared backend;
- room for a thinking model's reasoning: each request may take `reasoning_tokens` more completion tokens than its
  caller asks for its reply, since such a model writes its reasoning first (the aggregator's short calls ask for a
  handful of tokens, which the reasoning alone would use up, leaving no reply).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

from heavy.llm.types import Completion, CompletionDelta, LLMBackend, Message, Sampling


class AdjustedBackend:
    def __init__(self, backend: LLMBackend, *, priority: int = 0, reasoning_tokens: int = 0) -> None:
        self.backend, self.name = backend, backend.name
        self.priority, self.reasoning_tokens = priority, reasoning_tokens

    def _adjusted(self, sampling: Sampling, kwargs: dict) -> Sampling:
        kwargs["max_tokens"] = kwargs["max_tokens"] + self.reasoning_tokens
        return replace(sampling, priority=self.priority) if self.priority else sampling

    async def chat(self, messages: list[Message], tools: list[dict] | None, sampling: Sampling,
                   **kwargs) -> Completion:
        return await self.backend.chat(messages, tools, self._adjusted(sampling, kwargs), **kwargs)

    def stream(self, messages: list[Message], tools: list[dict] | None, sampling: Sampling,
               **kwargs) -> AsyncIterator[CompletionDelta]:
        return self.backend.stream(messages, tools, self._adjusted(sampling, kwargs), **kwargs)

    async def aclose(self) -> None:
        """The wrapped backend is shared by the worker's jobs: its owner closes it."""


def with_priority(backend: LLMBackend, priority: int) -> LLMBackend:
    return backend if priority == 0 else AdjustedBackend(backend, priority=priority)


def with_reasoning_room(backend: LLMBackend, reasoning_tokens: int) -> LLMBackend:
    return backend if reasoning_tokens == 0 else AdjustedBackend(backend, reasoning_tokens=reasoning_tokens)
