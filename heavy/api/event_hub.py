"""Live job events for an API process's followers: one reader per followed job, however many follow it.

A follower used to run its own blocking XREAD, holding one of the store's pooled connections for up to a second at
a time: a few hundred followers (a dashboard on a big screen, many users watching one job, `heavy jobs watch`
scripts) took every connection, and then the followers, job creation and readiness checks waited for one and failed
("Too many connections"). Here one task per followed job does the blocking read and hands each batch to all of the
job's followers, and checks their keys (one round trip for all of them) and the job's end once for all; a follower
only reads its own backlog, without blocking."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from heavy.metrics import SSE_READERS
from heavy.store import JobNotFound, Store, StoreError
from heavy.store.records import TERMINAL_EVENTS

BLOCK_MS = 1000  # how long one read waits for new events before checking the followers' keys and the job again

# what a reader hands a follower: a batch of events, its own failure, or None: the stream ends
Delivery = list[dict[str, Any]] | Exception | None


class _Follower:
    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.inbox: asyncio.Queue[Delivery] = asyncio.Queue()


@dataclass(eq=False)
class _JobReader:
    after: int  # the reader's next read starts after this event
    followers: set[_Follower] = field(default_factory=set)


class EventHub:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._readers: dict[str, _JobReader] = {}
        self._tasks: set[asyncio.Task] = set()  # the running readers (the loop keeps only weak references)

    async def follow(self, job_id: str, after: int, api_key: str) -> AsyncIterator[dict[str, Any]]:
        """The job's events after `after`, oldest first, live until its terminal event, until it has ended or
        is deleted, or until `api_key` is revoked."""
        follower = _Follower(api_key)
        reader = self._reader(job_id, after)
        reader.followers.add(follower)
        try:
            # The backlog is read here: it may lie before what the reader hands out (a follower joining others,
            # or resuming from Last-Event-ID). The reader reads on from no later than `after`, so the backlog
            # (up to the stream's end now) and its batches leave no gap; events seen in both are dropped by seq.
            while batch := await self.store.jobs.read_events(job_id, after):
                for event in batch:
                    after = event["seq"]
                    yield event
                    if event["type"] in TERMINAL_EVENTS:
                        return
            while (delivery := await follower.inbox.get()) is not None:
                if isinstance(delivery, Exception):
                    raise StoreError(f"reading the events of job {job_id} failed: {delivery}") from delivery
                for event in delivery:
                    if event["seq"] <= after:
                        continue
                    after = event["seq"]
                    yield event
                    if event["type"] in TERMINAL_EVENTS:
                        return
        finally:
            reader.followers.discard(follower)

    def _reader(self, job_id: str, after: int) -> _JobReader:
        """The job's reader, started now if it has none, reading on from no later than `after`."""
        reader = self._readers.get(job_id)
        if reader is None:
            reader = self._readers[job_id] = _JobReader(after)
            SSE_READERS.inc()
            task = asyncio.create_task(self._run(job_id, reader), name=f"events of {job_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        reader.after = min(reader.after, after)
        return reader

    async def _run(self, job_id: str, reader: _JobReader) -> None:
        end: Delivery = None
        try:
            await self._read(job_id, reader)
        except Exception as exc:  # Redis down past the store's retries: the streams break, their clients resume
            end = exc
        finally:
            # in the same step as the last await's outcome: a follower arriving later starts a new reader
            del self._readers[job_id]
            SSE_READERS.dec()
            for follower in reader.followers:
                follower.inbox.put_nowait(end)

    async def _read(self, job_id: str, reader: _JobReader) -> None:
        """Until the job has no followers left or has ended."""
        while reader.followers:
            revoked = await self.store.tenants.unknown({follower.api_key for follower in reader.followers})
            for follower in [follower for follower in reader.followers if follower.api_key in revoked]:
                reader.followers.discard(follower)  # its stream ends (its client's reconnection is refused)
                follower.inbox.put_nowait(None)
            if not reader.followers:
                return
            events = await self.store.jobs.read_events(job_id, reader.after, block_ms=BLOCK_MS)
            if events:
                reader.after = events[-1]["seq"]
                for follower in reader.followers:
                    follower.inbox.put_nowait(events)
                if events[-1]["type"] in TERMINAL_EVENTS:
                    return
                continue
            try:
                job = await self.store.jobs.get(job_id)
            except JobNotFound:  # deleted (or expired) while followed: the streams just end
                return
            if job.terminal and job.events <= reader.after:  # its terminal event came with its end
                return  # (JobStore.finish): one it never had (ended by an older worker that died) never comes
