"""GET /v1/jobs/{id}/events: the job's event stream as Server-Sent Events, resumable with `Last-Event-ID`
(the events' sequence numbers are their SSE ids, gap-free from 1)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Receive, Scope, Send

from heavy.api.deps import ApiKeyDep, EventHubDep, OpenStreamsDep, StoreDep, TenantDep
from heavy.api.errors import error_responses
from heavy.api.event_hub import EventHub
from heavy.api.routes_jobs import JobId
from heavy.metrics import SSE_FOLLOWERS

router = APIRouter(prefix="/v1/jobs", tags=["events"])

PING_S = 15
MAX_EVENT_ID = 2**63 - 1  # events are numbered by HINCRBY (64-bit); a larger id is no Redis stream id at all


async def follow(hub: EventHub, job_id: str, after: int, api_key: str) -> AsyncIterator[ServerSentEvent]:
    """The job's events after `after` as SSE, live, while `api_key` is valid: a key revoked meanwhile ends the stream
    (its client's reconnection is then refused)."""
    SSE_FOLLOWERS.inc()
    try:
        async for event in hub.follow(job_id, after, api_key):
            yield ServerSentEvent(data=json.dumps(event, ensure_ascii=False), event=event["type"], id=str(event["seq"]))
    finally:
        SSE_FOLLOWERS.dec()


@router.get("/{job_id}/events", response_class=Response,  # no JSON: the stream is its only 200 content
            responses={**error_responses(404, 429), 200: {"content": {"text/event-stream": {}},
                                                     "description": "Server-Sent Events"}})
async def job_events(
    job_id: JobId, tenant: TenantDep, api_key: ApiKeyDep, store: StoreDep, hub: EventHubDep, streams: OpenStreamsDep,
    last_event_id: Annotated[int | None, Header(ge=0, le=MAX_EVENT_ID)] = None,
    after: Annotated[int, Query(ge=0, le=MAX_EVENT_ID,
                                description="start after this event id (like Last-Event-ID)")] = 0,
) -> EventSourceResponse:
    """Every event of the job from the start (or after `Last-Event-ID`), live until the job ends. A tenant may
    have HEAVY_TENANT_MAX_STREAMS streams open at once (429 past that)."""
    await store.jobs.get(job_id, tenant)
    start = last_event_id if last_event_id is not None else after
    stream = await streams.open(tenant)
    return CountedEventSource(follow(hub, job_id, start, api_key), ping=PING_S, on_end=lambda: streams.close(stream))


class CountedEventSource(EventSourceResponse):
    """An event stream that calls `on_end` however it ends: its events all sent, its client gone, the server
    stopping, or never streamed at all (its generator's `finally` would not run then)."""

    def __init__(self, content: AsyncIterator[ServerSentEvent], *, on_end: Callable[[], None], **options: Any) -> None:
        super().__init__(content, **options)
        self.on_end = on_end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_end()
