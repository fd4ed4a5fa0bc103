"""Pieces shared by worker and fault tests: a scripted research backend, the in-memory corpus tools, and waits."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import httpx

from heavy.config import Settings
from heavy.store.records import TERMINAL_EVENTS
from heavy.tools.base import ToolExecutor
from tests.heavy.fakes import DictSearch, call, text

PAGES = {"http://corpus/argparse": "argparse parses command-line options and arguments.",
         "http://corpus/getopt": "getopt is a C-style parser for command-line options."}
WORKER_SETTINGS = Settings(tenant_max_jobs=3, context_tokens=2048, worker_lease_s=1.5, worker_jobs=2)
JOB = {"question": "Which module parses command-line options?", "trajectories": 3, "max_steps": 4,
       "tools": ["search"]}


def step_of(request) -> int:
    return int(request.request_id.split(":")[2])


def researcher(request):
    """Trajectory k: step 0 searches, step 1 searches again with other words, step 2 answers."""
    if request.trajectory < 0:
        return text("Use argparse [1]; getopt also exists [2]. Click ships with Python [9].")  # [9]: never fetched
    if request.forced:
        return text("argparse")
    step = step_of(request)
    if step < 2:
        return call("search", query=["command-line options", "parser arguments"][step])
    return call("answer", answer="argparse", confidence=0.9)


def executor() -> ToolExecutor:
    return ToolExecutor([DictSearch(PAGES)])


async def wait_for(predicate, timeout_s: float = 20.0, interval_s: float = 0.02):
    """Poll an async predicate until it returns something truthy; that value, or TimeoutError."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(interval_s)
    raise TimeoutError(f"condition not met within {timeout_s}s")


def spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A worker or API of tests/heavy/service_proc.py in a process of its own (`env` adds to this one's)."""
    return subprocess.Popen([sys.executable, "-m", "tests.heavy.service_proc", *args],
                            env={**os.environ, **(env or {})})


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()


async def ended(store, job_id: str):
    """The job's record once it has ended, else None (a predicate for `wait_for`)."""
    job = await store.jobs.get(job_id)
    return job if job.terminal else None


async def submit_job(store) -> str:
    job, _ = await store.jobs.submit("acme", question=JOB["question"], mode="report", params={
        "trajectories": 3, "max_steps": 4, "step_tokens": 64, "trajectory_tokens": 10_000, "job_tokens": 50_000,
        "deadline_s": 120, "tools": ["search"]})
    return job.id


async def all_events(store, job_id: str) -> list[dict]:
    return await store.jobs.read_events(job_id, 0, count=10_000)


async def finished(store, job_id: str):
    """(job, events) once the job is terminal and its terminal event is out: the worker saves the final status
    first and then releases the event, so a reader can see one a moment before the other."""
    job = await store.jobs.get(job_id)
    events = await all_events(store, job_id) if job.terminal else []
    return (job, events) if events and events[-1]["type"] in TERMINAL_EVENTS else None


async def wait_api_ready(base_url: str, timeout_s: float = 30.0) -> None:
    """Wait until the API at `base_url` answers /readyz with 200."""
    async def ready() -> bool:
        try:
            async with httpx.AsyncClient() as client:
                return (await client.get(f"{base_url}/readyz")).status_code == 200
        except httpx.TransportError:
            return False
    await wait_for(ready, timeout_s=timeout_s)


def assert_gap_free(events: list[dict], trajectories: int) -> None:
    """Events numbered 1..n; one job_started first and one terminal event last; per trajectory, steps 1..m each
    once and exactly one trajectory_done."""
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "job_started" and [e["type"] for e in events].count("job_started") == 1
    for k in range(trajectories):
        steps = [e["step"] for e in events if e["type"] == "trajectory_step" and e["trajectory"] == k]
        assert steps == list(range(1, len(steps) + 1)), (k, steps)
        assert sum(e["type"] == "trajectory_done" and e["trajectory"] == k for e in events) == 1
