"""A job's priority on every model request it makes: the runtime schedules lower first (vLLM's convention), so an
interactive job's trajectories and report pass need not queue behind a batch job's on a shared backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

from heavy.llm.types import Completion, CompletionDelta, LLMBackend, Message, Sampling


class PrioritizedBackend:
    def __init__(self, backend: LLMBackend, priority: int) -> None:
        self.backend, self.priority, self.name = backend, priority, backend.name

    async def chat(self, messages: list[Message], tools: list[dict] | None, sampling: Sampling,
                   **kwargs) -> Completion:
        return await self.backend.chat(messages, tools, replace(sampling, priority=self.priority), **kwargs)

    def stream(self, messages: list[Message], tools: list[dict] | None, sampling: Sampling,
               **kwargs) -> AsyncIterator[CompletionDelta]:
        return self.backend.stream(messages, tools, replace(sampling, priority=self.priority), **kwargs)

    async def aclose(self) -> None:
        """The wrapped backend is shared by the worker's jobs: its owner closes it."""


def with_priority(backend: LLMBackend, priority: int) -> LLMBackend:
    return backend if priority == 0 else PrioritizedBackend(backend, priority)
