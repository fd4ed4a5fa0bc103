"""The worker's event sink: events go to the job's Redis stream, numbered without gaps.

A worker that takes over a job replays the steps its predecessor had not checkpointed; events the stream already
holds from that attempt (same type, trajectory, step, call) are skipped, so followers see each once. Not a
trajectory's end: a trajectory that runs again had no result checkpointed (one that had is not run again), so the
earlier `trajectory_done` (a crash's error, or an answer its worker died before saving) is of a run the report will
not hold, and the new one, written after it, is the outcome followers end with. The terminal event is held back:
the worker writes it with the report and the final status, in one step (JobStore.finish), so a client reacting to
`report_ready` always finds the report and no job ends without it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from heavy.events import Event, SinkUnreachable
from heavy.llm.types import Usage
from heavy.store import JobStore, JobTakenOver
from heavy.store.records import AGGREGATING, RUNNING, TERMINAL_EVENTS


def store_unreachable(exc: BaseException) -> bool:
    """Whether `exc` is Redis not taking the job's writes for now, not the job's fault: down past the store's
    retries, or refusing writes until that is fixed: MISCONF (it cannot persist: a full disk under its AOF or
    snapshots), READONLY (a replica: a primary demoted by a failover) or OOM (at its maxmemory, evicting nothing)."""
    return isinstance(exc, (SinkUnreachable, RedisConnectionError, RedisTimeoutError, ReadOnlyError,
                            OutOfMemoryError)) or (isinstance(exc, ResponseError) and str(exc).startswith("MISCONF"))


def event_key(event: dict[str, Any]) -> tuple | None:
    """What makes an event one an earlier attempt already wrote; None for one every attempt writes anew."""
    kind = event["type"]
    if kind == "trajectory_step":
        return kind, event["trajectory"], event["step"]
    if kind in ("tool_call", "tool_result"):
        return kind, event["trajectory"], event["step"], event["call_id"]
    if kind == "trajectory_done":
        return None
    return (kind,)


class RedisEventSink:
    def __init__(self, jobs: JobStore, job_id: str, already_written: Counter | None = None, *,
                 owner: str = "", on_taken_over: Callable[[JobTakenOver], None] | None = None) -> None:
        """`owner`: the worker running the job; its writes fail (JobTakenOver) once another worker has taken the
        job over, and `on_taken_over` is told first (the worker stops its run)."""
        self.jobs, self.job_id, self.owner, self.on_taken_over = jobs, job_id, owner, on_taken_over
        self.already_written = already_written or Counter()
        self.terminal: dict[str, Any] | None = None  # the held terminal event
        self.usage = Usage()  # what the steps this attempt ran spent

    @classmethod
    async def open(cls, jobs: JobStore, job_id: str, *, owner: str,
                   on_taken_over: Callable[[JobTakenOver], None]) -> RedisEventSink:
        """A sink that knows the events earlier attempts of the job wrote."""
        written: Counter = Counter()
        after = 0
        while batch := await jobs.read_events(job_id, after):
            written.update(key for event in batch if (key := event_key(event)) is not None)
            after = batch[-1]["seq"]
        return cls(jobs, job_id, written, owner=owner, on_taken_over=on_taken_over)

    async def emit(self, event: Event) -> None:
        data = event.to_dict()
        if data["type"] == "trajectory_step":
            self.usage += Usage(data["prompt_tokens"], data["completion_tokens"])
        elif data["type"] == "aggregating":
            await self.fenced(self.jobs.update(self.job_id, allowed=(RUNNING, AGGREGATING), owner=self.owner,
                                               status=AGGREGATING))
        key = event_key(data)
        if key is not None and self.already_written[key] > 0:
            self.already_written[key] -= 1
            return
        if data["type"] in TERMINAL_EVENTS:
            self.terminal = data
            return
        await self.fenced(self.jobs.append_event(self.job_id, data, owner=self.owner))

    async def fenced(self, write: Awaitable[Any]) -> None:
        """Await one of the owner's writes of the job (fenced on its `worker`); a refusal is told first."""
        try:
            await write
        except JobTakenOver as exc:
            if self.on_taken_over is not None:
                self.on_taken_over(exc)
            raise
        except Exception as exc:
            if not store_unreachable(exc):
                raise
            raise SinkUnreachable(f"job {self.job_id}: Redis unreachable: {exc}") from exc
