"""Run one job: N trajectories concurrently on one backend, then aggregate.

Stops, all shared through one StopSignal so every in-flight request and tool call is aborted:
- the job token budget is spent → aggregate what exists, marked partial; the aggregation is kept a part of the
  grant and spends only what is left of it (agent/budget.py);
- the job deadline passed and at least `straggler_min_done` trajectories are done → cut the stragglers;
  deadline + grace passed → aggregate whatever exists (partial, never nothing);
- answer mode: `early_stop_k` trajectories agree → stop the rest;
- `JobControl.finish_now()` → stop and aggregate (partial; `heavy ask`'s, while a report is aggregated, also aborts
  its model requests and the report is made of what is at hand); `JobControl.cancel()` → stop, no report (also while
  aggregating: the aggregator's model requests are aborted).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

from heavy.agent import (
    JobTokenBudget,
    Stopped,
    StopSignal,
    Trajectory,
    TrajectoryLimits,
    TrajectoryResult,
    TrajectorySpec,
)
from heavy.agent.budget import EXTERNAL_STOPS, GrantedBackend, until_stopped
from heavy.agent.openings import focus_query
from heavy.aggregate import REPORT_REQUEST, AggregationConfig, JobResult, aggregate, agreeing
from heavy.config import Settings
from heavy.events import (
    Aggregating,
    EventSink,
    JobCancelled,
    JobFailed,
    JobStarted,
    NullSink,
    ReportReady,
    SinkUnreachable,
)
from heavy.llm.adjusted import with_priority
from heavy.llm.served import usable_context
from heavy.llm.types import LLMBackend, Sampling, Usage
from heavy.tools.base import ToolExecutor

log = logging.getLogger(__name__)

PARTIAL_STOPS = ("job_tokens", "finish_now", "straggler_cutoff", "job_deadline")


class AllTrajectoriesFailed(RuntimeError):
    """Every trajectory ended on an error (e.g. the model endpoint was down): there is nothing to aggregate, and a
    retry may succeed, so the job fails with the first error instead of reporting 'done' with no work."""


@dataclass(frozen=True)
class JobSpec:
    job_id: str
    question: str
    mode: str = "report"
    trajectories: int = 8
    allowed_tools: frozenset[str] = frozenset({"search", "open_page", "python"})
    limits: TrajectoryLimits = field(default_factory=TrajectoryLimits)
    job_tokens: int = 400_000
    deadline_s: float = 900.0
    straggler_min_done: int = 5
    straggler_grace_s: float = 60.0
    early_stop_k: int = 5
    temperature_min: float = 0.0
    temperature_max: float = 0.7
    seed: int = 0
    opening_search: bool = True  # every trajectory's first step searches the question as asked
    focus_searches: bool = True  # and trajectory k >= 1 then searches a named part of it (agent/openings.py)
    priority: int = 0  # of every model request of the job: lower first (heavy/llm/adjusted.py)
    elapsed_s: float = 0.0  # a resumed job's time run before (its deadlines count from when it first started)
    earlier_usage: Usage = Usage()  # what a resumed job's earlier attempts spent that no checkpoint holds

    def __post_init__(self) -> None:
        if self.mode not in ("report", "answer"):
            raise ValueError(f"mode must be 'report' or 'answer', got {self.mode!r}")
        if not 1 <= self.trajectories <= 8:
            raise ValueError(f"trajectories must be 1..8, got {self.trajectories}")
        if not self.question.strip():
            raise ValueError("question is empty")
        if self.job_tokens < 1 or self.deadline_s <= 0 or self.straggler_grace_s < 0 or self.elapsed_s < 0:
            raise ValueError("job_tokens >= 1, deadline_s > 0, straggler_grace_s >= 0 and elapsed_s >= 0 required")
        if self.straggler_min_done < 1 or self.early_stop_k < 1:
            raise ValueError("straggler_min_done and early_stop_k must be >= 1")
        if not 0 <= self.temperature_min <= self.temperature_max:
            raise ValueError("need 0 <= temperature_min <= temperature_max")

    @classmethod
    def from_settings(cls, settings: Settings, *, job_id: str, question: str, **overrides) -> JobSpec:
        limits = trajectory_limits(settings)
        values = dict(
            mode=settings.mode, trajectories=settings.trajectories, allowed_tools=frozenset(settings.allowed_tools),
            limits=limits, job_tokens=settings.job_tokens, deadline_s=settings.job_deadline_s,
            straggler_min_done=settings.straggler_min_done, straggler_grace_s=settings.straggler_grace_s,
            early_stop_k=settings.early_stop_k, temperature_min=settings.temperature_min,
            temperature_max=settings.temperature_max, seed=settings.seed, opening_search=settings.opening_search,
            focus_searches=settings.focus_searches,
        )
        values.update(overrides)
        return cls(job_id=job_id, question=question, **values)

    def sampling(self, k: int) -> Sampling:
        """Trajectory k's sampling: temperatures spread from min (k = 0) to max, a seed of its own."""
        spread = k / (self.trajectories - 1) if self.trajectories > 1 else 0.0
        temperature = self.temperature_min + spread * (self.temperature_max - self.temperature_min)
        return Sampling(temperature=round(temperature, 3), seed=self.seed + k)


def trajectory_limits(settings: Settings, **job_values) -> TrajectoryLimits:
    """The deployment's trajectory limits (HEAVY_*), with a job's own budgets (max_steps, step_tokens, total_tokens,
    deadline_s) in place of the defaults; the model's context and reasoning room are the deployment's alone."""
    values = dict(max_steps=settings.max_steps, step_tokens=settings.step_tokens,
                  total_tokens=settings.trajectory_tokens, deadline_s=settings.job_deadline_s)
    return TrajectoryLimits(**{**values, **job_values}, context_tokens=settings.context_tokens,
                            reasoning_tokens=settings.reasoning_tokens)


class JobControl:
    """Handles the service holds on a running job."""

    def __init__(self, save_aggregation: Callable[[Usage], Awaitable[None]] | None = None) -> None:
        """`save_aggregation`: keeps what the aggregation spent so far, called after each of its model calls
        (GrantedBackend's `save`)."""
        self.save_aggregation = save_aggregation
        self.stop = StopSignal()
        self.cancelled = StopSignal()  # cancel() only: honoured while aggregating too, when `stop` is long set
        self.trajectories_usage: Usage | None = None  # what the trajectories spent, once they all ended
        self.aggregator: GrantedBackend | None = None  # the job's aggregator backend, once it aggregates
        self.hurried: StopSignal | None = None  # a report's aggregation under way: its model requests' stop

    @property
    def aggregator_usage(self) -> Usage:
        """What the aggregation spent so far: no checkpoint holds it, so a stopping worker hands it over."""
        return self.aggregator.usage if self.aggregator is not None else Usage()

    @property
    def spent(self) -> Usage | None:
        """What this run's model requests spent, as their backends counted them: the trajectories' (their restored
        checkpoints, failed and aborted requests included) and the aggregation's (its failed calls too); None while
        the trajectories run. The job's charge, however it ends (a failure's too), with its earlier attempts'."""
        if self.trajectories_usage is None:
            return None
        return self.trajectories_usage + self.aggregator_usage

    def aggregating(self) -> StopSignal:
        """The stop of the aggregator's model requests, armed now: a finish asked for earlier stopped the
        trajectories, and the report pass is still to run on what they found."""
        self.hurried = StopSignal()
        return self.hurried

    def finish_now(self, *, aggregation_too: bool = False) -> None:
        """Stop the trajectories; what they found is aggregated (partial). `aggregation_too` (`heavy ask`'s Ctrl-C):
        once a report is aggregated, its model requests stop too. Not the service's finish: a job field that a worker
        polls, asked for while the job ran (the API refuses it once aggregating), which a poll after the aggregation
        began, or a worker resuming the job, must not turn into a stop of the report pass."""
        if aggregation_too and self.hurried is not None:
            self.hurried.set("finish_now")
        self.stop.set("finish_now")

    def cancel(self) -> None:
        self.cancelled.set("cancelled")
        self.stop.set("cancelled")


class Scheduler:
    def __init__(self, backend: LLMBackend, executor: ToolExecutor,
                 aggregation: AggregationConfig | None = None,
                 trajectory_factory: Callable[..., Trajectory] = Trajectory) -> None:
        self.backend, self.executor = backend, executor
        self.aggregation = aggregation or AggregationConfig()
        self.trajectory_factory = trajectory_factory  # the worker's factory restores checkpointed trajectories

    async def run(self, spec: JobSpec, *, sink: EventSink | None = None,
                  control: JobControl | None = None) -> JobResult:
        sink = sink or NullSink()
        control = control or JobControl()
        await sink.emit(JobStarted(job_id=spec.job_id, question=spec.question, mode=spec.mode,
                                   trajectories=spec.trajectories))
        # the aggregation is kept a part of the grant (at most half: a small grant still runs trajectories), and
        # spends within what is left of it: a job never spends more than its grant (agent/budget.py)
        reserve = min(self.aggregation.reserve_tokens, spec.job_tokens // 2)
        budget = JobTokenBudget(spec.job_tokens, reserve=reserve)
        budget.charge(spec.earlier_usage.total_tokens)
        try:
            spec, aggregation = await self._within_served_context(spec)
            results, reason = await self._run_trajectories(spec, sink, control.stop, budget)
            control.trajectories_usage = sum((r.usage for r in results), Usage())
            if control.cancelled.is_set():  # also when the trajectories had stopped for another reason first
                await sink.emit(JobCancelled(job_id=spec.job_id))
                return _cancelled(spec, results, control.spent, self.aggregation)
            if results and all(r.stop_reason == "error" for r in results):
                raise AllTrajectoriesFailed(
                    f"all {len(results)} trajectories failed, nothing to report; first error: {results[0].error}")
            finished = sum(r.stop_reason not in EXTERNAL_STOPS for r in results)
            await sink.emit(Aggregating(job_id=spec.job_id, done=finished, stopped=len(results) - finished,
                                        reason=reason))
            status = "partial" if reason in PARTIAL_STOPS else "done"
            # its prompts are fitted by what the server counted for the trajectories' (the same pages), to the
            # context a refusal showed them (a server that does not report it)
            aggregation = replace(aggregation, counted_per_estimated=budget.counted_per_estimated or 1.0,
                                  context_tokens=min(aggregation.context_tokens,
                                                     budget.served_context or aggregation.context_tokens))
            # answer mode's judge is not hurried: its vote is the eval's path
            granted = GrantedBackend(with_priority(self.backend, spec.priority), budget, kept_for=REPORT_REQUEST,
                                     keep=reserve * (spec.mode == "report"),
                                     stop=control.aggregating() if spec.mode == "report" else None,
                                     save=control.save_aggregation)
            control.aggregator = granted
            try:  # a cancel while aggregating aborts the aggregator's model requests: no report
                result = await until_stopped(
                    aggregate(job_id=spec.job_id, question=spec.question, mode=spec.mode, results=results,
                              backend=granted, status=status, stop_reason=reason, config=aggregation),
                    control.cancelled)
            except Stopped:  # what the aggregator's calls spent until then is charged with the trajectories'
                await sink.emit(JobCancelled(job_id=spec.job_id))
                return _cancelled(spec, results, control.spent, self.aggregation)
            # what the backends counted: the aggregator's own sum leaves out its calls that failed, which it survives
            usage = control.spent + spec.earlier_usage
            result = replace(result, usage=usage, cost_usd=aggregation.cost_usd(usage))
        except SinkUnreachable:  # not the job's failure: it is resumed once its store is back
            raise
        except Exception as exc:
            await sink.emit(JobFailed(job_id=spec.job_id, error=f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            self.executor.forget(spec.job_id)
        await sink.emit(ReportReady(job_id=spec.job_id, answer=result.answer, agreement=result.agreement,
                                    partial=result.partial, sources=len(result.sources),
                                    total_tokens=result.usage.total_tokens, report_error=result.report_error))
        return result

    async def _within_served_context(self, spec: JobSpec) -> tuple[JobSpec, AggregationConfig]:
        """The job and its aggregation with their prompts fitted to the server's context where that is smaller than
        HEAVY_CONTEXT_TOKENS (a ValueError, failing the job, when it cannot hold a step and its reasoning room)."""
        limits, aggregation = spec.limits, self.aggregation
        context = await usable_context(self.backend, max(limits.context_tokens, aggregation.context_tokens))
        if context < limits.context_tokens:
            spec = replace(spec, limits=replace(limits, context_tokens=context))
        if context < aggregation.context_tokens:
            aggregation = replace(aggregation, context_tokens=context)
        return spec, aggregation

    async def _run_trajectories(self, spec: JobSpec, sink: EventSink, stop: StopSignal,
                                budget: JobTokenBudget) -> tuple[list[TrajectoryResult], str]:
        tasks = {
            asyncio.create_task(self._one(spec, k, sink, stop, budget), name=f"{spec.job_id}:{k}")
            for k in range(spec.trajectories)
        }
        watchers = {asyncio.create_task(stop.wait()), asyncio.create_task(budget.exhausted.wait())}
        deadline = time.monotonic() + spec.deadline_s - spec.elapsed_s
        results: list[TrajectoryResult] = []
        reason = "all_done"
        pending = set(tasks)
        try:
            while pending:
                now = time.monotonic()
                until = deadline if now < deadline else deadline + spec.straggler_grace_s
                done, _ = await asyncio.wait(pending | watchers, timeout=max(0.0, until - now),
                                             return_when=asyncio.FIRST_COMPLETED)
                for task in done & pending:
                    results.append(task.result())
                pending -= done
                reason = self._should_stop(spec, stop, budget, results, deadline)
                if reason:
                    break
            else:
                reason = "all_done"
            if pending:  # stopped trajectories return promptly with their best answers
                results += await asyncio.gather(*pending)
        finally:
            for task in watchers | pending:
                task.cancel()
            if pending:  # the worker stops (SIGTERM): they charge what their cut requests spent before it exits
                await asyncio.gather(*pending, return_exceptions=True)
        return results, reason

    def _should_stop(self, spec: JobSpec, stop: StopSignal, budget: JobTokenBudget,
                     results: Sequence[TrajectoryResult], deadline: float) -> str:
        """The reason to stop every trajectory now (and raise the stop signal), or "" to keep waiting."""
        if stop.is_set():
            return stop.reason or "cancelled"
        reason = ""
        now = time.monotonic()
        if budget.exhausted.is_set():
            reason = "job_tokens"
        elif (spec.mode == "answer" and len(results) < spec.trajectories
              and agreeing(results, spec.early_stop_k, spec.question)):
            reason = "early_stop"
        elif now >= deadline and len(results) >= min(spec.straggler_min_done, spec.trajectories):
            reason = "straggler_cutoff"
        elif now >= deadline + spec.straggler_grace_s:
            reason = "job_deadline"
        if reason:
            stop.set(reason)
        return reason

    async def _one(self, spec: JobSpec, k: int, sink: EventSink, stop: StopSignal,
                   budget: JobTokenBudget) -> TrajectoryResult:
        sampling = spec.sampling(k)
        trajectory_spec = TrajectorySpec(job_id=spec.job_id, index=k, question=spec.question,
                                         allowed_tools=spec.allowed_tools, sampling=sampling, limits=spec.limits,
                                         opening_search=spec.opening_search, job_trajectories=spec.trajectories,
                                         elapsed_s=spec.elapsed_s,
                                         focus=focus_query(spec.question, k) if spec.focus_searches else None)
        trajectory = self.trajectory_factory(trajectory_spec, with_priority(self.backend, spec.priority),
                                             self.executor, sink=sink, stop=stop, job_budget=budget)
        try:
            return await trajectory.run()
        except SinkUnreachable:  # the store, not the trajectory: the whole run stops and is resumed later
            raise
        except Exception as exc:  # one broken trajectory must not sink the other seven
            log.exception("trajectory %s/%d crashed", spec.job_id, k)
            # what it had gathered and its best guess still go to the aggregator; its lane ends, saying why (it
            # had no trajectory_done: the dashboard showed it running until the job ended)
            result = trajectory.result_so_far("error", f"{type(exc).__name__}: {exc}")
            await trajectory.events.done(result)
            return result


def _cancelled(spec: JobSpec, results: Sequence[TrajectoryResult], spent: Usage,
               aggregation: AggregationConfig) -> JobResult:
    """No report, but what it spent and what that cost, as a finished job's are: charged all the same."""
    usage = spent + spec.earlier_usage
    return JobResult(job_id=spec.job_id, question=spec.question, mode=spec.mode, status="cancelled", answer="",
                     agreement=0.0, markdown="", sources=(), trajectories=tuple(sorted(results, key=lambda r: r.index)),
                     usage=usage, cost_usd=aggregation.cost_usd(usage), stop_reason="cancelled")
