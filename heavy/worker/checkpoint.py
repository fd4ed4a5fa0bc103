"""Trajectory checkpoints: a running trajectory's state after every step, and its result once it has ended on its
own. A worker that takes over a job restores both: ended trajectories are not run again, the others continue
from their last completed step with the same messages, evidence and budgets, and the tool calls each had made
still count against the job's call caps."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from heavy.agent import ActionStep, Observation, Trajectory, TrajectoryResult
from heavy.agent.budget import EXTERNAL_STOPS
from heavy.compat import from_known_fields
from heavy.llm.types import ToolCall, Usage
from heavy.tools.base import Source

log = logging.getLogger(__name__)

SaveCheckpoint = Callable[[int, dict[str, Any]], Awaitable[None]]
# How long a stopping worker waits to save what its cut requests spent: well inside a pod's grace period
# (deploy/k8s/base/worker.yaml), and only when Redis stalls.
SPENT_SAVE_TIMEOUT_S = 10.0


def _source(data: dict) -> Source:
    return from_known_fields(Source, data)


def _call(data: dict) -> ToolCall:
    return from_known_fields(ToolCall, data)


def _usage(data: dict) -> Usage:
    return from_known_fields(Usage, data)


def _step(data: dict) -> ActionStep:
    observations = tuple(
        Observation(call=_call(o["call"]), text=o["text"], sources=tuple(map(_source, o["sources"])),
                    error=o["error"], repeated=o["repeated"])
        for o in data["observations"]
    )
    return ActionStep(index=data["index"], content=data["content"], reasoning=data["reasoning"],
                      calls=tuple(map(_call, data["calls"])), observations=observations,
                      usage=_usage(data["usage"]), feedback=data["feedback"])


def result_to_dict(result: TrajectoryResult) -> dict[str, Any]:
    return asdict(result)


def result_from_dict(data: dict[str, Any]) -> TrajectoryResult:
    return TrajectoryResult(
        index=data["index"], answer=data["answer"], confidence=data["confidence"], stop_reason=data["stop_reason"],
        cited=tuple(map(_source, data["cited"])), evidence=tuple(map(_source, data["evidence"])),
        steps=tuple(map(_step, data["steps"])), usage=_usage(data["usage"]), temperature=data["temperature"],
        seed=data["seed"], error=data["error"], excerpts=dict(data["excerpts"]),
    )


def state_of(trajectory: Trajectory) -> dict[str, Any]:
    """What a trajectory needs to continue after its last completed step (copies of what later steps add to: the
    stopping worker saves it again)."""
    return {
        "messages": list(trajectory.messages),
        "steps": [asdict(step) for step in trajectory.steps],
        "evidence": [asdict(source) for source in trajectory.evidence.values()],
        "excerpts": dict(trajectory.excerpts),
        "seen_calls": sorted(trajectory.seen_calls),
        **_settings_of(trajectory),
    }


def _settings_of(trajectory: Trajectory) -> dict[str, Any]:
    """The state's values a save sets whole each time (small: the rest only grows)."""
    return {
        "kind": "state",
        "usage": asdict(trajectory.requests.usage),
        "best_guess": trajectory.best_guess,
        "no_progress": trajectory.no_progress,
        "answer_rejected": trajectory.answer_rejected,
        "output_rejected": trajectory.output_rejected,
        "title_rejected": trajectory.title_rejected,
        "unsaid_forced": trajectory.unsaid_forced,
        **_counted_per_estimated(trajectory),
        "context_tokens": trajectory.requests.context_tokens,
        "tool_calls": _tool_calls(trajectory),
    }


@dataclass
class SavedMarks:
    """How far a trajectory's growing state was saved: the next save is a change line of what came after, in the
    log its whole save named (heavy/store/checkpoint_log.py), so a step writes its own size, not the whole
    transcript again."""
    log: str
    messages: int
    steps: int
    evidence: dict[str, Source]
    excerpts: dict[str, str]
    seen_calls: set[str]
    usage: Usage

    @classmethod
    def of(cls, trajectory: Trajectory, log: str) -> SavedMarks:
        return cls(log, len(trajectory.messages), len(trajectory.steps), dict(trajectory.evidence),
                   dict(trajectory.excerpts), set(trajectory.seen_calls), trajectory.usage)


def change_of(trajectory: Trajectory, saved: SavedMarks) -> dict[str, Any]:
    """What `trajectory` changed since `saved`, as a change line of its checkpoint log."""
    return {
        "log": saved.log,
        "at": {"messages": saved.messages, "steps": saved.steps},
        "append": {
            "messages": trajectory.messages[saved.messages:],
            "steps": [asdict(step) for step in trajectory.steps[saved.steps:]],
            "evidence": [asdict(source) for url, source in trajectory.evidence.items()
                         if saved.evidence.get(url) is not source],  # restored by url: the last one stands
            "seen_calls": sorted(trajectory.seen_calls - saved.seen_calls),
        },
        "update": {"excerpts": {url: text for url, text in trajectory.excerpts.items()
                                if saved.excerpts.get(url) != text}},
        **_settings_of(trajectory),
    }


def _counted_per_estimated(trajectory: Trajectory) -> dict[str, float]:
    """The trajectory's ratio, left out until a reply showed it: workers before b036a45 read a missing one as
    1.0 and failed the job on a null (TypeError), so a job such a worker takes over during a rolling upgrade or a
    downgrade, in its trajectories' first model request, would fail."""
    ratio = trajectory.requests.counted_per_estimated
    return {} if ratio is None else {"counted_per_estimated": ratio}


def _tool_calls(trajectory: Trajectory) -> dict[str, int]:
    return trajectory.executor.calls_of(trajectory.spec.job_id, trajectory.spec.index)


def restore(trajectory: Trajectory, state: dict[str, Any]) -> None:
    trajectory.messages = list(state["messages"])
    trajectory.steps = [_step(step) for step in state["steps"]]
    trajectory.requests.usage = _usage(state["usage"])
    trajectory.evidence = {s["url"]: _source(s) for s in state["evidence"]}
    trajectory.excerpts = dict(state["excerpts"])
    trajectory.seen_calls = set(state["seen_calls"])
    trajectory.best_guess = state["best_guess"]
    trajectory.no_progress = state["no_progress"]
    trajectory.answer_rejected = state["answer_rejected"]
    # absent from checkpoints written before it existed (a worker upgraded while a job ran)
    trajectory.output_rejected = state.get("output_rejected", False)
    trajectory.title_rejected = state.get("title_rejected", False)
    trajectory.unsaid_forced = state.get("unsaid_forced", False)
    trajectory.requests.counted_per_estimated = state.get("counted_per_estimated")
    trajectory.requests.context_tokens = state.get("context_tokens", trajectory.spec.limits.context_tokens)


class CheckpointedTrajectory(Trajectory):
    """A trajectory that saves itself after every step and can start from a saved checkpoint."""

    def __init__(self, *args, save: SaveCheckpoint, saved: dict[str, Any] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.save = save
        self.saved_result: TrajectoryResult | None = None
        if saved and saved["kind"] == "result":
            self.saved_result = result_from_dict(saved["result"])
        elif saved:
            restore(self, saved)
        if saved:  # absent from checkpoints written before calls were saved: those count from zero
            self.executor.restore_calls(self.spec.job_id, self.spec.index, saved.get("tool_calls", {}))
        self.checkpoint = state_of(self)  # the state restored (or the start): what a save before any step repeats
        self.saved: SavedMarks | None = None  # how far this run saved: None, nothing yet (the next save is whole)
        if saved and self.job_budget is not None:  # the aggregator's holds and prompts are scaled by the job's
            if saved.get("counted_per_estimated") is not None:  # None: no reply of its own showed it yet
                self.job_budget.calibrate(saved["counted_per_estimated"])
            context = saved.get("context_tokens", self.spec.limits.context_tokens)
            if context < self.spec.limits.context_tokens:  # and fitted to the server's context a refusal showed
                self.job_budget.learn_context(context)

    async def run(self) -> TrajectoryResult:
        if self.saved_result is not None:  # ended before the takeover: its events are already in the stream
            if self.job_budget is not None:
                self.job_budget.charge(self.saved_result.usage.total_tokens)
            return self.saved_result
        if self.job_budget is not None and self.usage.total_tokens:
            self.job_budget.charge(self.usage.total_tokens)  # what the restored steps spent
        try:
            result = await super().run()
        except asyncio.CancelledError:  # the worker stops (SIGTERM) or lost the job
            await self._save_spent()
            raise
        if result.stop_reason not in EXTERNAL_STOPS:
            await self._save_result(result)
        else:  # a stopped one continues if the job is resumed (its worker stopped while it aggregated): from its
            await self._save_spent()  # checkpoint, with what the request the stop cut spent
        return result

    async def _save_result(self, result: TrajectoryResult) -> None:
        """Its result, so a worker that takes the job over does not run it again. A save that fails (Redis past the
        store's retries, or the job taken over) does not undo the end: its trajectory_done is out, the job keeps the
        result, and a worker that takes the job over runs it again from its last state. Raised, it ended the
        trajectory a second time (the scheduler's done for a crash, counted twice by the metrics)."""
        try:
            await self.save(self.spec.index, {"kind": "result", "result": result_to_dict(result),
                                              "tool_calls": _tool_calls(self), **_counted_per_estimated(self),
                                              "context_tokens": self.requests.context_tokens})
        except Exception as exc:
            log.warning("trajectory %s/%d: its result is not checkpointed (%s); a worker taking the job over runs it "
                        "again", self.spec.job_id, self.spec.index, exc)

    async def after_step(self) -> None:
        if self.final is None:  # an answering step is saved as the result right after
            whole = self.saved is None  # this run's first save: a log of its own, which its later saves extend
            log_name = uuid.uuid4().hex if whole else self.saved.log
            await self.save(self.spec.index,
                            {**state_of(self), "log": log_name} if whole else change_of(self, self.saved))
            self.saved = SavedMarks.of(self, log_name)

    async def _save_spent(self) -> None:
        """The last checkpoint again, with what the trajectory spent since: a request the worker's stop or the job's
        (finish-now, a straggler cut) cut (what its server did, agent/requests.py), a reply whose step's tool calls
        it cut. The worker resuming the job redoes
        that step and charges the job (and its tenant) this too; the server did the work either way. Not when the
        write is refused (another worker runs the job now) or Redis does not answer within the grace."""
        saved_usage = _usage(self.checkpoint["usage"]) if self.saved is None else self.saved.usage
        if self.usage == saved_usage:
            return
        spent = ({**self.checkpoint, "usage": asdict(self.usage)} if self.saved is None
                 else {"log": self.saved.log, "update": {}, "usage": asdict(self.usage)})  # the usage changed alone
        try:
            await asyncio.wait_for(self.save(self.spec.index, spent), SPENT_SAVE_TIMEOUT_S)
        except Exception as exc:
            log.warning("trajectory %s/%d: what its cut step spent is not charged (%s)", self.spec.job_id,
                        self.spec.index, exc)
