"""Limits of one trajectory, the token budget shared by a job, and the stop signal the scheduler raises."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

# Reasons a trajectory ends. The first group is decided by the trajectory itself and is followed by a forced
# short final answer; the second comes from outside (the scheduler) and stops at once with the best answer so far.
OWN_STOPS = ("max_steps", "tokens", "no_progress", "deadline")
EXTERNAL_STOPS = ("finish_now", "cancelled", "early_stop", "straggler_cutoff", "job_tokens", "job_deadline")


@dataclass(frozen=True)
class TrajectoryLimits:
    max_steps: int = 30
    step_tokens: int = 512  # completion tokens per step
    total_tokens: int = 60_000  # prompt + completion over the whole trajectory
    deadline_s: float = 900.0  # wall clock, from the trajectory's start
    context_tokens: int = 8192  # prompt + completion must fit this
    no_progress_steps: int = 4  # consecutive steps without new evidence before giving up
    final_answer_tokens: int = 64
    final_answer_timeout_s: float = 120.0
    reasoning_tokens: int = 0  # a thinking model's reasoning, on top of step_tokens and final_answer_tokens

    def __post_init__(self) -> None:
        for name in ("max_steps", "step_tokens", "total_tokens", "context_tokens", "no_progress_steps",
                     "final_answer_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.deadline_s <= 0 or self.final_answer_timeout_s <= 0:
            raise ValueError("deadline_s and final_answer_timeout_s must be > 0")
        if self.reasoning_tokens < 0:
            raise ValueError(f"reasoning_tokens must be >= 0, got {self.reasoning_tokens}")
        if self.step_tokens + self.reasoning_tokens >= self.context_tokens:
            raise ValueError(f"step_tokens + reasoning_tokens ({self.step_tokens} + {self.reasoning_tokens}) must be "
                             f"< context_tokens ({self.context_tokens})")


class JobTokenBudget:
    """Tokens shared by all trajectories of a job; `exhausted` is set once the total is reached."""

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError(f"job token budget must be >= 1, got {total}")
        self.total = total
        self.used = 0
        self.exhausted = asyncio.Event()

    @property
    def remaining(self) -> int:
        return max(0, self.total - self.used)

    def charge(self, tokens: int) -> None:
        self.used += tokens
        if self.used >= self.total:
            self.exhausted.set()


class Stopped(Exception):
    """Raised inside a trajectory when the scheduler stopped it or its deadline passed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StopSignal:
    """Set once by the scheduler with a reason; every await of a trajectory races against it."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.reason: str | None = None

    def set(self, reason: str) -> None:
        if reason not in EXTERNAL_STOPS:
            raise ValueError(f"unknown stop reason {reason!r}")
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()


async def until_stopped(awaitable: Awaitable[T], stop: StopSignal, deadline: float | None = None) -> T:
    """Await `awaitable` unless `stop` is set or the monotonic `deadline` passes first; then cancel it (which
    aborts an in-flight LLM request or tool call) and raise Stopped."""
    if stop.is_set():
        if inspect.iscoroutine(awaitable):
            awaitable.close()  # never started; closing it spares a "never awaited" warning
        raise Stopped(stop.reason or "cancelled")
    work = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(stop.wait())
    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
    try:
        done, _ = await asyncio.wait({work, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            return work.result()
        raise Stopped(stop.reason if watcher in done else "deadline")
    finally:
        for task in (work, watcher):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
