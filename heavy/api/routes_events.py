"""GET /v1/jobs/{id}/events: the job's event stream as Server-Sent Events, resumable with `Last-Event-ID`
(the events' sequence numbers are their SSE ids, gap-free from 1)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from heavy.api.deps import ApiKeyDep, StoreDep, TenantDep
from heavy.api.routes_jobs import ERRORS, JobId
from heavy.metrics import SSE_FOLLOWERS
from heavy.store import JobNotFound, Store, UnknownApiKey
from heavy.store.records import TERMINAL_EVENTS

router = APIRouter(prefix="/v1/jobs", tags=["events"])

BLOCK_MS = 1000  # how long one read waits for new events before checking the client and the job again
PING_S = 15
MAX_EVENT_ID = 2**63 - 1  # events are numbered by HINCRBY (64-bit); a larger id is no Redis stream id at all


async def follow(store: Store, job_id: str, after: int, request: Request, api_key: str
                 ) -> AsyncIterator[ServerSentEvent]:
    """The job's events after `after`, live, while `api_key` is valid: a key revoked meanwhile ends the stream (its
    client's reconnection is then refused)."""
    SSE_FOLLOWERS.inc()
    try:
        while not await request.is_disconnected():
            try:
                await store.tenants.resolve(api_key)
            except UnknownApiKey:
                return
            events = await store.jobs.read_events(job_id, after, block_ms=BLOCK_MS)
            for event in events:
                after = event["seq"]
                yield ServerSentEvent(data=json.dumps(event, ensure_ascii=False), event=event["type"], id=str(after))
                if event["type"] in TERMINAL_EVENTS:
                    return
            if not events:
                try:
                    job = await store.jobs.get(job_id)
                except JobNotFound:  # deleted (or expired) while followed: the stream just ends
                    return
                if job.terminal and job.events <= after:  # its terminal event came with its end (JobStore.finish):
                    return  # one it never had (a job ended by an older worker that died in between) never comes
    finally:
        SSE_FOLLOWERS.dec()


@router.get("/{job_id}/events", responses={**ERRORS, 200: {"content": {"text/event-stream": {}},
                                                           "description": "Server-Sent Events"}})
async def job_events(
    job_id: JobId, tenant: TenantDep, api_key: ApiKeyDep, store: StoreDep, request: Request,
    last_event_id: Annotated[int | None, Header(ge=0, le=MAX_EVENT_ID)] = None,
    after: Annotated[int, Query(ge=0, le=MAX_EVENT_ID,
                                description="start after this event id (like Last-Event-ID)")] = 0,
) -> EventSourceResponse:
    """Every event of the job from the start (or after `Last-Event-ID`), live until the job ends."""
    await store.jobs.get(job_id, tenant)
    start = last_event_id if last_event_id is not None else after
    return EventSourceResponse(follow(store, job_id, start, request, api_key), ping=PING_S)
