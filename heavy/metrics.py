"""Prometheus metrics of the service. The worker feeds the job metrics from its events (`MetricsSink`); the job
store counts ended jobs wherever they end; the API adds request metrics and, at scrape time, the queue depth. In
`heavy up` all live in one process, shown by the API's /metrics; a `heavy worker` shows its own (`served`): only
what a worker moves, not the API's series it would show at 0 (an avg or min over pods would count them)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

from heavy.events import Event, ToolResultEvent, TrajectoryDone, TrajectoryStep

API_REQUESTS = Counter("heavy_api_requests_total", "API requests", ["method", "route", "status"])
API_LATENCY = Histogram("heavy_api_request_seconds", "API request latency", ["route"],
                        buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
SSE_FOLLOWERS = Gauge("heavy_sse_followers", "Open event streams")
SSE_READERS = Gauge("heavy_sse_readers", "Jobs whose events this API process reads for its streams (in a few "
                    "blocking Redis reads)")
JOBS_SUBMITTED = Counter("heavy_jobs_submitted_total", "Jobs accepted", ["mode"])
JOBS_FINISHED = Counter("heavy_jobs_finished_total", "Jobs ended, by final status", ["status"])
JOB_SECONDS = Histogram("heavy_job_seconds", "Wall time of a job a worker ended, from when it first started",
                        buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 3600))
TRAJECTORIES = Counter("heavy_trajectories_total", "Trajectories ended, by stop reason", ["stop_reason"])
STEPS = Counter("heavy_steps_total", "Trajectory steps (model calls)")
TOOL_CALLS = Counter("heavy_tool_calls_total", "Tool calls, by tool and outcome", ["tool", "ok"])
TOKENS = Counter("heavy_tokens_total", "LLM tokens of trajectory steps", ["kind"])
ERRORS = Counter("heavy_errors_total", "Errors, by where: api (a request's unexpected error), api_store (the job store "
                 "failing a request), worker (a worker's error running a job, which is retried), job (a job a worker "
                 "ended as failed, once)", ["where"])
QUEUE_DEPTH = Gauge("heavy_queue_depth", "Entries in the jobs stream (queued or running)")
QUEUE_PENDING = Gauge("heavy_queue_pending", "Jobs claimed by a worker and not yet acknowledged")

# what a `heavy worker` process serves: the metrics a worker moves (JobStore.finish counts the jobs it ends), and
# the process's own (CPU, memory, GC); the API's requests, streams and queue gauges stay at the API
WORKER_REGISTRY = CollectorRegistry()
for _collector in (JOBS_FINISHED, JOB_SECONDS, TRAJECTORIES, STEPS, TOOL_CALLS, TOKENS, ERRORS, PROCESS_COLLECTOR,
                   PLATFORM_COLLECTOR, GC_COLLECTOR):
    WORKER_REGISTRY.register(_collector)


class MetricsSink:
    """An event sink that counts what a job does."""

    async def emit(self, event: Event) -> None:
        if isinstance(event, TrajectoryStep):
            STEPS.inc()
            TOKENS.labels("prompt").inc(event.prompt_tokens)
            TOKENS.labels("completion").inc(event.completion_tokens)
        elif isinstance(event, ToolResultEvent):
            TOOL_CALLS.labels(event.tool, str(event.ok).lower()).inc()
        elif isinstance(event, TrajectoryDone):
            TRAJECTORIES.labels(event.stop_reason).inc()


@contextlib.asynccontextmanager
async def served(host: str, port: int | None) -> AsyncIterator[None]:
    """This worker process's metrics (`WORKER_REGISTRY`) at http://host:port/metrics while the block runs (from a
    thread of its own, so a busy event loop does not hold up a scrape); nothing when `port` is None."""
    if port is None:
        yield
        return
    server, thread = start_http_server(port, host, WORKER_REGISTRY)
    try:
        yield
    finally:
        await asyncio.to_thread(server.shutdown)  # waits for its loop's next poll, up to half a second
        server.server_close()
        thread.join()
