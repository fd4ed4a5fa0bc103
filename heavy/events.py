"""Typed, versioned job events and the async sink they are written to.

Each event is a frozen dataclass with a `type` (the Redis stream event type of design.md) and serialises to
a flat JSON object carrying `schema_version`, so consumers (the Redis store, SSE, the CLI) can evolve apart: within
a version an event only gains fields, each with a default, and a reader passes over the fields it does not know (a
CLI older than the service it follows); a change an older reader cannot pass over takes a new version
(heavy/compat.py: the rule for every record heavy stores or sends).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Protocol

from heavy.compat import from_known_fields

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Event:
    type: ClassVar[str] = "event"
    job_id: str
    ts: float = field(default_factory=time.time, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "schema_version": SCHEMA_VERSION, **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, default=str)


@dataclass(frozen=True)
class JobStarted(Event):
    type: ClassVar[str] = "job_started"
    question: str
    mode: str
    trajectories: int


@dataclass(frozen=True)
class TrajectoryStep(Event):
    type: ClassVar[str] = "trajectory_step"
    trajectory: int
    step: int
    action: str  # "tool_call", "answer", "text", "forced_answer"
    thought: str  # the visible reasoning/content of the step, shortened
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int  # this trajectory so far


@dataclass(frozen=True)
class ToolCallEvent(Event):
    type: ClassVar[str] = "tool_call"
    trajectory: int
    step: int
    call_id: str
    tool: str
    arguments: dict


@dataclass(frozen=True)
class ToolResultEvent(Event):
    type: ClassVar[str] = "tool_result"
    trajectory: int
    step: int
    call_id: str
    tool: str
    ok: bool
    chars: int
    truncated: bool
    sources: list[dict]  # provenance: url, title, fetched_at, content_hash
    note: str = ""  # e.g. "repeated call: earlier result returned"


@dataclass(frozen=True)
class TrajectoryDone(Event):
    type: ClassVar[str] = "trajectory_done"
    trajectory: int
    answer: str
    confidence: float
    stop_reason: str
    steps: int
    total_tokens: int
    cited: list[str]
    # why a trajectory stopped on an error ("" otherwise): a model endpoint's refusal or outage was on no event but
    # the job's failure, when every trajectory had one
    error: str = ""


@dataclass(frozen=True)
class Aggregating(Event):
    type: ClassVar[str] = "aggregating"
    done: int
    stopped: int
    reason: str  # all_done | early_stop | straggler_cutoff | job_tokens | finish_now | deadline


@dataclass(frozen=True)
class ReportReady(Event):
    type: ClassVar[str] = "report_ready"
    answer: str
    agreement: float
    partial: bool
    sources: int
    total_tokens: int
    report_error: str = ""  # report mode: why the report pass wrote no findings (the report is partial)


@dataclass(frozen=True)
class JobFailed(Event):
    type: ClassVar[str] = "job_failed"
    error: str


@dataclass(frozen=True)
class JobCancelled(Event):
    type: ClassVar[str] = "job_cancelled"
    reason: str = "cancelled by request"


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls
    for cls in (
        JobStarted, TrajectoryStep, ToolCallEvent, ToolResultEvent, TrajectoryDone, Aggregating, ReportReady,
        JobFailed, JobCancelled,
    )
}


def event_from_dict(data: dict[str, Any]) -> Event:
    """Inverse of `Event.to_dict` (what a Redis consumer calls); fields a newer service added are passed over."""
    kind, version = data["type"], data.get("schema_version", SCHEMA_VERSION)
    if version > SCHEMA_VERSION:
        raise ValueError(f"event schema version {version} is newer than this code ({SCHEMA_VERSION})")
    try:
        cls = EVENT_TYPES[kind]
    except KeyError:
        raise ValueError(f"unknown event type {kind!r}") from None
    return from_known_fields(cls, data)


class SinkUnreachable(Exception):
    """A job's events or checkpoints could not be written: its store stayed unreachable past its retries, or refused
    writes for now (a full disk, a replica, its maxmemory reached). The run stops, leaving the job as the store last
    saw it, to be resumed from there once the store is back, instead of ending it (or a trajectory) for the store's
    fault."""


class EventSink(Protocol):
    async def emit(self, event: Event) -> None: ...


class NullSink:
    async def emit(self, event: Event) -> None:
        return None


class MemorySink:
    """Keeps every event in order (tests, the CLI's final summary)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def emit(self, event: Event) -> None:
        self.events.append(event)

    def of_type(self, cls: type[Event]) -> list[Event]:
        return [e for e in self.events if isinstance(e, cls)]


class FanoutSink:
    """Writes every event to several sinks, in the order given."""

    def __init__(self, *sinks: EventSink) -> None:
        self.sinks = sinks

    async def emit(self, event: Event) -> None:
        for sink in self.sinks:
            await sink.emit(event)
