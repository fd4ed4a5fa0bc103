"""The events one trajectory emits as it goes: each step, each tool call and its result, and its end."""

from __future__ import annotations

from heavy.agent.steps import TrajectoryResult
from heavy.events import EventSink, ToolCallEvent, ToolResultEvent, TrajectoryDone, TrajectoryStep
from heavy.llm.types import Completion, ToolCall
from heavy.tools.base import Source

THOUGHT_CHARS = 300  # how much of a step's text goes into its event


class TrajectoryEvents:
    def __init__(self, sink: EventSink, job_id: str, trajectory: int) -> None:
        self.sink, self.job_id, self.trajectory = sink, job_id, trajectory

    async def step(self, index: int, completion: Completion, content: str, calls: list[ToolCall], total_tokens: int,
                   action: str | None = None) -> None:
        """`total_tokens`: what the trajectory spent so far."""
        if action is None:
            action = ",".join(f"{c.name}" for c in calls) if calls else "text"
        await self.sink.emit(TrajectoryStep(
            job_id=self.job_id, trajectory=self.trajectory, step=index, action=action,
            thought=(completion.reasoning + " " + content).strip()[:THOUGHT_CHARS],
            prompt_tokens=completion.usage.prompt_tokens, completion_tokens=completion.usage.completion_tokens,
            total_tokens=total_tokens,
        ))

    async def call(self, index: int, call: ToolCall) -> None:
        await self.sink.emit(ToolCallEvent(job_id=self.job_id, trajectory=self.trajectory, step=index,
                                           call_id=call.id, tool=call.name, arguments=call.arguments))

    async def result(self, index: int, call: ToolCall, *, ok: bool, chars: int, truncated: bool,
                     sources: tuple[Source, ...], note: str = "") -> None:
        await self.sink.emit(ToolResultEvent(
            job_id=self.job_id, trajectory=self.trajectory, step=index, call_id=call.id, tool=call.name,
            ok=ok, chars=chars, truncated=truncated, note=note,
            sources=[{"url": s.url, "title": s.title, "fetched_at": s.fetched_at, "content_hash": s.content_hash}
                     for s in sources],
        ))

    async def done(self, result: TrajectoryResult) -> None:
        await self.sink.emit(TrajectoryDone(
            job_id=self.job_id, trajectory=self.trajectory, answer=result.answer,
            confidence=result.confidence, stop_reason=result.stop_reason, steps=len(result.steps),
            total_tokens=result.usage.total_tokens, cited=[s.url for s in result.cited], error=result.error or "",
        ))
