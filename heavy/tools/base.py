"""The tool contract and the executor every tool call of a trajectory goes through.

A tool is anything with a name, a description, a JSON-schema `parameters` and `async run(args, ctx)`.
Tools never see a call the job did not allow: `ToolExecutor.call` checks the job's allow-list, validates
the arguments, enforces the per-job call caps, the timeout and the output cap, and records provenance.
The agent always gets a `ToolResult` back; failures are results with `error` set, never exceptions.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from heavy.tools.schema import check_schema, validate_args


class ToolError(Exception):
    """An expected failure inside a tool (bad URL, refused address, sandbox error): shown to the agent as is."""


@dataclass(frozen=True)
class Source:
    """Provenance of one piece of evidence: where it came from, when, and a hash of what was read."""

    url: str
    title: str
    fetched_at: float  # unix time
    content_hash: str  # sha256 hex of the text the tool returned for this URL
    snippet: str = ""


@dataclass(frozen=True)
class ToolResult:
    text: str
    sources: tuple[Source, ...] = ()
    truncated: bool = False
    error: str | None = None

    @classmethod
    def failure(cls, message: str) -> ToolResult:
        return cls(text=f"Error: {message}", error=message)


@dataclass(frozen=True)
class ToolContext:
    job_id: str
    trajectory: int
    allowed_tools: frozenset[str]
    deadline: float | None = None  # time.monotonic() value after which no tool may run
    trajectories: int = 1  # how many trajectories the job runs: its call caps grow with them


@runtime_checkable
class Tool(Protocol):
    name: str
    description: str
    parameters: dict  # JSON schema of the arguments object

    async def run(self, args: dict, ctx: ToolContext) -> ToolResult: ...


@dataclass(frozen=True)
class ToolLimits:
    timeout_s: float = 30.0
    output_chars: int = 8_000
    # Calls per tool and per trajectory of a job, unless `call_caps` names the tool. A job of N trajectories may
    # make N times as many, shared among them: a cap that does not grow with N starved the eight trajectories of
    # heavy mode (two opening searches each use up 16 of 20 searches).
    default_call_cap: int = 20
    call_caps: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.output_chars < 1:
            raise ValueError(f"output_chars must be >= 1, got {self.output_chars}")
        caps = {"default_call_cap": self.default_call_cap, **self.call_caps}
        negative = {name: cap for name, cap in caps.items() if cap < 0}
        if negative:
            raise ValueError(f"call caps must be >= 0, got {negative}")

    def cap_for(self, tool: str) -> int:
        return self.call_caps.get(tool, self.default_call_cap)


@dataclass(frozen=True)
class CallRecord:
    """One executed (or refused) tool call, kept per job for events and citation checks."""

    job_id: str
    trajectory: int
    tool: str
    args: Any
    started_at: float  # unix time
    duration_s: float
    sources: tuple[Source, ...]
    truncated: bool
    error: str | None


def truncate_text(text: str, limit: int) -> tuple[str, bool]:
    """Cut `text` to `limit` characters and say so at the end, so the agent knows it saw a part."""
    if len(text) <= limit:
        return text, False
    return f"{text[:limit]}\n[output truncated: showing {limit} of {len(text)} characters]", True


class ToolExecutor:
    """Runs tool calls for many jobs; counters and records are kept per job and are thread-safe."""

    def __init__(self, tools: Iterable[Tool], limits: ToolLimits | None = None) -> None:
        self.limits = limits or ToolLimits()
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            if tool.name in self._tools:
                raise ValueError(f"two tools are named {tool.name!r}")
            if tool.parameters.get("type") != "object":
                raise ValueError(f"tool {tool.name!r}: parameters must be a JSON schema of type 'object'")
            check_schema(tool.parameters, f"tool {tool.name!r} parameters")
            self._tools[tool.name] = tool
        self._lock = threading.Lock()
        self._calls: dict[str, dict[tuple[int, str], int]] = {}  # job -> (trajectory, tool) -> calls charged
        self._records: dict[str, list[CallRecord]] = {}

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._tools)

    def specs(self, allowed: Iterable[str] | None = None) -> list[dict]:
        """OpenAI function specs of the tools in `allowed` (all tools when None), in registration order."""
        wanted = self.names if allowed is None else frozenset(allowed)
        return [
            {
                "type": "function",
                "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
            }
            for t in self._tools.values()
            if t.name in wanted
        ]

    def calls_made(self, job_id: str, tool: str) -> int:
        """Calls of `tool` charged to the job's cap, all its trajectories together."""
        with self._lock:
            return self._made(job_id, tool)

    def _made(self, job_id: str, tool: str) -> int:
        return sum(n for (_, name), n in self._calls.get(job_id, {}).items() if name == tool)

    def calls_of(self, job_id: str, trajectory: int) -> dict[str, int]:
        """What one trajectory of the job has charged to the caps, by tool (saved with its checkpoints)."""
        with self._lock:
            return {name: n for (k, name), n in self._calls.get(job_id, {}).items() if k == trajectory}

    def restore_calls(self, job_id: str, trajectory: int, calls: dict[str, int]) -> None:
        """Charge a trajectory's calls made before a takeover (calls_of on the worker that ran it), so the job's
        caps count them: set, not added, so restoring twice counts once."""
        with self._lock:
            job = self._calls.setdefault(job_id, {})
            for name, n in calls.items():
                job[(trajectory, name)] = n

    def records(self, job_id: str) -> list[CallRecord]:
        with self._lock:
            return list(self._records.get(job_id, ()))

    def forget(self, job_id: str) -> None:
        """Drop a finished job's counters and records."""
        with self._lock:
            self._records.pop(job_id, None)
            self._calls.pop(job_id, None)

    async def call(self, name: str, args: Any, ctx: ToolContext) -> ToolResult:
        started_at, t0 = time.time(), time.monotonic()
        result = await self._checked_call(name, args, ctx)
        self._record(CallRecord(
            job_id=ctx.job_id, trajectory=ctx.trajectory, tool=name, args=args, started_at=started_at,
            duration_s=time.monotonic() - t0, sources=result.sources, truncated=result.truncated, error=result.error,
        ))
        return result

    async def _checked_call(self, name: str, args: Any, ctx: ToolContext) -> ToolResult:
        if name not in ctx.allowed_tools or name not in self._tools:
            allowed = ", ".join(sorted(ctx.allowed_tools & self.names)) or "none"
            return ToolResult.failure(f"tool '{name}' is not available in this job (available: {allowed})")
        tool = self._tools[name]
        problems = validate_args(args, tool.parameters)
        if problems:
            return ToolResult.failure(f"invalid arguments for '{name}': " + "; ".join(problems))
        timeout = self.limits.timeout_s
        if ctx.deadline is not None:
            timeout = min(timeout, ctx.deadline - time.monotonic())
            if timeout <= 0:
                return ToolResult.failure("the job's deadline has passed; no more tool calls")
        cap = self.limits.cap_for(name) * max(1, ctx.trajectories)
        if not self._reserve_call(ctx.job_id, ctx.trajectory, name, cap):
            return ToolResult.failure(f"call limit reached for '{name}' ({cap} per job); answer with what you have")
        return await self._run(tool, args, ctx, timeout)

    def _reserve_call(self, job_id: str, trajectory: int, tool: str, cap: int) -> bool:
        with self._lock:
            if self._made(job_id, tool) >= cap:
                return False
            job = self._calls.setdefault(job_id, {})
            job[(trajectory, tool)] = job.get((trajectory, tool), 0) + 1
            return True

    async def _run(self, tool: Tool, args: dict, ctx: ToolContext, timeout: float) -> ToolResult:
        try:
            result = await asyncio.wait_for(tool.run(args, ctx), timeout)
        except TimeoutError:
            return ToolResult.failure(f"'{tool.name}' timed out after {timeout:.1f}s")
        except ToolError as exc:
            return ToolResult.failure(str(exc))
        except Exception as exc:  # a tool bug must not kill the trajectory; the agent sees what failed
            return ToolResult.failure(f"'{tool.name}' failed: {type(exc).__name__}: {exc}")
        text, cut = truncate_text(result.text, self.limits.output_chars)
        return replace(result, text=text, truncated=result.truncated or cut)

    def _record(self, record: CallRecord) -> None:
        with self._lock:
            self._records.setdefault(record.job_id, []).append(record)
