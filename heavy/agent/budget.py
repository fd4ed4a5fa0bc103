"""Limits of one trajectory, the token budget shared by a job, and the stop signal the scheduler raises."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from heavy.agent.context import aborted_usage, estimate_tokens, failed_usage, with_earlier_attempts, with_usage
from heavy.llm.types import Completion, CompletionDelta, LLMBackend, LLMError, Message, Meter, Sampling, Usage

T = TypeVar("T")

# Reasons a trajectory ends. The first group is decided by the trajectory itself and is followed by a forced
# short final answer; the second comes from outside (the scheduler) and stops at once with the best answer so far.
OWN_STOPS = ("max_steps", "tokens", "no_progress", "deadline")
EXTERNAL_STOPS = ("finish_now", "cancelled", "early_stop", "straggler_cutoff", "job_tokens", "job_deadline")
# What a request is held by per estimated prompt token until the job has learned its server's ratio: a token a
# character, where the estimate reads 3 characters a token (agent/context.py). Chinese counts 1.9 on the embedded
# model's tokenizer; only text a tokenizer splits into bytes counts more.
UNKNOWN_RATIO = 3.0


@dataclass(frozen=True)
class TrajectoryLimits:
    max_steps: int = 30
    step_tokens: int = 512  # completion tokens per step
    total_tokens: int = 60_000  # prompt + completion over the whole trajectory
    deadline_s: float = 900.0  # wall clock, from the trajectory's start
    context_tokens: int = 8192  # prompt + completion must fit this
    no_progress_steps: int = 4  # consecutive steps without new evidence or computed output before giving up
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
    """The tokens a job may spend, its grant. The trajectories share all of it but `reserve`, kept for the
    aggregation, which may then spend what is left of the whole grant; `exhausted` is set once the trajectories'
    share is spent. Every model request holds its largest cost (`request_bound`) while in flight and is refused
    when that does not fit even once the others in flight have settled, so what is charged never passes the grant
    (as far as the prompt estimate, scaled by what the server counted, holds): the trajectories stop (a partial
    report), and the aggregator goes without the calls that no longer fit. `counted_per_estimated`: the server's
    prompt tokens per estimated one, the largest any request of the job showed (Chinese: 1.9 for the embedded
    model's tokenizer; None until one did), by which the aggregator's holds are scaled, and those of a trajectory
    that has no ratio of its own yet (`bound`).
    `served_context`: the server's context when a refusal showed it smaller than the job's (None until then), which
    the aggregator's prompts are fitted to as well."""

    def __init__(self, total: int, reserve: int = 0) -> None:
        if total < 1:
            raise ValueError(f"job token budget must be >= 1, got {total}")
        if not 0 <= reserve <= total:
            raise ValueError(f"reserve must be in 0..{total}, got {reserve}")
        self.total, self.reserve = total, reserve
        self.used = 0
        self.held = 0  # by requests in flight
        self.exhausted = asyncio.Event()
        self._settled = asyncio.Event()
        self.counted_per_estimated: float | None = None
        self.served_context: int | None = None

    def calibrate(self, counted_per_estimated: float) -> None:
        self.counted_per_estimated = max(self.counted_per_estimated or 1.0, counted_per_estimated)

    def learn_context(self, tokens: int) -> None:
        self.served_context = min(tokens, self.served_context or tokens)

    @property
    def remaining(self) -> int:
        """What is left of the trajectories' share, requests in flight aside."""
        return max(0, self.total - self.reserve - self.used)

    def bound(self, estimated: int, own_ratio: float | None, max_tokens: int, keep: int | None = None) -> int:
        """What a request holds (`request_bound`): by its sender's own ratio, else the job's. While neither has one
        (the job's first requests, sent together), by UNKNOWN_RATIO: the first reply tells the others waiting for
        room what they need; the job's first request alone, when that does not fit, by the estimate."""
        ratio = own_ratio or self.counted_per_estimated
        if ratio is None:
            cautious = request_bound(estimated, UNKNOWN_RATIO, max_tokens)
            if self.held or cautious <= self._room(keep):
                return cautious
            ratio = 1.0
        return request_bound(estimated, ratio, max_tokens)

    def _room(self, keep: int | None) -> int:
        return self.total - self.used - self.held - (self.reserve if keep is None else keep)

    async def hold(self, tokens: int | Callable[[], int], *, keep: int | None = None) -> int:
        """Hold `tokens` for a request about to be sent once they fit what is left less `keep` (default the
        reserve: a trajectory's request), waiting while requests in flight hold what it needs (they may spend
        less); `tokens` may be a function, asked again once they settle (their replies show the job's ratio). What
        it held; 0 when it does not fit with none in flight, which spends the trajectories' share."""
        need = tokens if callable(tokens) else lambda: tokens
        while (size := need()) > self._room(keep):
            if not self.held:
                self.exhausted.set()
                return 0
            await self._settled.wait()
        self.held += size
        return size

    def settle(self, held: int, spent: int) -> None:
        """A request's hold given back and what it spent charged (0 when it never completed)."""
        self.held -= held
        self.charge(spent)
        self._settled.set()  # wakes the requests waiting for room, which wait on a new event if it is still short
        self._settled = asyncio.Event()

    def charge(self, tokens: int) -> None:
        self.used += tokens
        if self.used >= self.total - self.reserve:
            self.exhausted.set()


def request_bound(estimated: int, counted_per_estimated: float, max_tokens: int) -> int:
    """The most a request may spend: its prompt's estimate (the one the context is fitted by) scaled to what the
    server counts, and all its completion tokens."""
    return int(estimated * counted_per_estimated) + max_tokens


_STOPPED = "stopped by finish now before the model answered"


class GrantedBackend:
    """The aggregator's backend, inside the job's grant: a request that does not fit what is left of it fails as
    an LLMError, which every aggregator call survives (the report goes without that call's part). Until the request
    `kept_for` is sent (the report pass, whose prompt the others' results shape), the others leave it `keep`
    tokens: the reserve the trajectories left is the report pass's. `usage`: what its calls spent, those a cancel
    aborted included (what a job cancelled while aggregating is charged for them). Once `stop` is set (finish now,
    while aggregating), a request in flight is aborted and the rest are refused, each an LLMError: the report is
    made at once of what is at hand. `save`, when given, is awaited with `usage` after each call that was not
    cancelled, one at a time (the last with the latest): the worker keeps it in the job, so a worker killed while
    aggregating loses at most the calls in flight."""

    def __init__(self, backend: LLMBackend, budget: JobTokenBudget, *, kept_for: str = "", keep: int = 0,
                 stop: StopSignal | None = None, save: Callable[[Usage], Awaitable[None]] | None = None) -> None:
        self.backend, self.budget, self.name = backend, budget, backend.name
        self.kept_for, self.keep = kept_for, keep
        self.stop = stop or StopSignal()
        self.usage = Usage()
        self.save = save
        self._saved = Usage()
        self._saving = asyncio.Lock()

    async def chat(self, messages: list[Message], tools: list[dict] | None, sampling: Sampling, *, max_tokens: int,
                   **kwargs) -> Completion:
        try:
            completion = await self._granted_chat(messages, tools, sampling, max_tokens=max_tokens, **kwargs)
        except Exception:  # a failed call's spend too; a cancelled one's is its canceller's to hand over
            await self._save_usage()
            raise
        await self._save_usage()
        return completion

    async def _save_usage(self) -> None:
        if self.save is None:
            return
        async with self._saving:  # concurrent calls' saves in order, so the last written is the latest usage
            if self.usage != self._saved:
                usage = self.usage
                await self.save(usage)
                self._saved = usage

    async def _granted_chat(self, messages: list[Message], tools: list[dict] | None, sampling: Sampling, *,
                            max_tokens: int, **kwargs) -> Completion:
        if kwargs.get("request_id") == self.kept_for:
            self.keep = 0
        if self.stop.is_set():
            raise LLMError(_STOPPED)
        estimated = max(1, estimate_tokens(messages, tools))
        def needs() -> int:
            return self.budget.bound(estimated, None, max_tokens, self.keep)
        bound = await self.budget.hold(needs, keep=self.keep)
        if not bound:
            raise LLMError(f"the job's token grant has {self.budget.total - self.budget.used - self.budget.held} "
                           f"tokens left (keeping {self.keep}), the request may take {needs()}")
        spent, meter = Usage(), kwargs.setdefault("meter", Meter())
        try:
            completion = await until_stopped(
                self.backend.chat(messages, tools, sampling, max_tokens=max_tokens, **kwargs), self.stop)
            # the aggregator's own text (the pages' passages) may count more than the trajectories' prompts did
            self.budget.calibrate(completion.usage.prompt_tokens / estimated)
            completion = with_usage(completion, messages, tools)  # a server that reports none: the estimate
            completion = with_earlier_attempts(completion, meter, messages, tools)
            spent = completion.usage
            return completion
        except asyncio.CancelledError:  # aborted in flight: what the server did is charged
            spent = aborted_usage(meter, messages, tools)
            raise
        except Stopped:  # the same, and the aggregator goes on without this call's part
            spent = aborted_usage(meter, messages, tools)
            raise LLMError(_STOPPED) from None
        except Exception as exc:  # and what it did before it failed (or a bug crashed the call)
            spent = failed_usage(meter, exc, messages, tools)
            raise
        finally:
            self.usage = self.usage + spent
            self.budget.settle(bound, spent.total_tokens)

    def stream(self, messages: list[Message], tools: list[dict] | None, sampling: Sampling,
               **kwargs) -> AsyncIterator[CompletionDelta]:
        raise NotImplementedError("the aggregator does not stream")

    async def aclose(self) -> None:
        """The wrapped backend is shared by the worker's jobs: its owner closes it."""


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
        left = [task for task in (work, watcher) if not task.done()]
        for task in left:
            task.cancel()
        # waited for, their outcomes dropped; not a cancel of ours arriving meanwhile (a suppress of CancelledError
        # swallowed it: a trajectory its worker's stop cancelled then went on to its next step)
        await asyncio.gather(*left, return_exceptions=True)


@dataclass
class Charge:
    """What a request spent, set by its sender once it completed (0 until then); `meter`, the request's, follows
    what it spends in flight."""

    tokens: int = 0
    meter: Meter = field(default_factory=Meter)

    def aborted(self, prompt: list[Message], tools: list[dict] | None) -> Usage:
        """What the request spent until it was aborted (agent/context.py aborted_usage), now its charge."""
        return self._charged(aborted_usage(self.meter, prompt, tools))

    def failed(self, error: Exception, prompt: list[Message], tools: list[dict] | None) -> Usage:
        """What the request spent until it failed (agent/context.py failed_usage), now its charge."""
        return self._charged(failed_usage(self.meter, error, prompt, tools))

    def _charged(self, spent: Usage) -> Usage:
        self.tokens = spent.total_tokens
        return spent


@contextlib.asynccontextmanager
async def job_grant(budget: JobTokenBudget | None, tokens: int | Callable[[], int], stop: StopSignal,
                    deadline: float) -> AsyncIterator[Charge]:
    """Hold `tokens` of the job's grant around a trajectory's request, its largest cost (eight trajectories at
    once cannot together pass the trajectories' share), then charge what it spent; Stopped("job_tokens") when the
    share cannot hold them. Without a budget nothing is held."""
    charge = Charge()
    if budget is None:
        yield charge
        return
    held = await until_stopped(budget.hold(tokens), stop, deadline)
    if not held:
        raise Stopped("job_tokens")
    try:
        yield charge
    finally:
        budget.settle(held, charge.tokens)
