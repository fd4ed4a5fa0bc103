"""Live job events for an API process's followers: one blocking read for all the jobs followed, however many.

A follower used to run its own blocking XREAD, holding one of the store's pooled connections for up to a second at
a time: a few hundred followers (a dashboard on a big screen, many users watching one job, `heavy jobs watch`
scripts) took every connection, and then the followers, job creation and readiness checks waited for one and failed
("Too many connections"). One reader per followed job fixed that for many followers of a job, but not for many
jobs followed (a dashboard of many running jobs, many users each watching their own): past ~100 the readers held
the pool again. Here one task reads the streams of every followed job in one blocking XREAD (one connection per
process; on a cluster the store's keys share one slot, so the multi-key read is legal there too), hands each job's
batch to all of its followers, and checks their keys (one round trip for all of them) and the quiet jobs' ends (one
more) once per BLOCK_MS; a follower only reads its own backlog, without blocking. A job followed while the read
waits is not in it: the read also names a wake stream of the hub's own, and an entry there ends it, so it is issued
again with the job (cancelling it instead would close its connection, a reconnect per job followed)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from heavy.metrics import SSE_READERS
from heavy.store import Store, StoreError
from heavy.store.records import TERMINAL_EVENTS

BLOCK_MS = 1000  # how long one read waits for new events; the followers' keys and quiet jobs are checked as often

# what the hub hands a follower: a batch of events, the reads' failure, or None: the stream ends
Delivery = list[dict[str, Any]] | Exception | None


class _Follower:
    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.inbox: asyncio.Queue[Delivery] = asyncio.Queue()


@dataclass(eq=False)
class _JobReader:
    after: int  # the next read of the job's stream starts after this event
    followers: set[_Follower] = field(default_factory=set)
    quiet: bool = True  # no events read since its end was last checked (a new job's is checked at once)
    checked: bool = False


class EventHub:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._readers: dict[str, _JobReader] = {}  # the followed jobs
        self._loop: asyncio.Task | None = None  # reading them all, while there are any
        self._wake = store.jobs.wake_stream()  # named in its read too: rung to end the read early
        self._waiting = False  # the loop's read is in flight: a job followed now is not in it
        self._woken = False  # that read was rung already
        self._rings: set[asyncio.Task] = set()

    async def follow(self, job_id: str, after: int, api_key: str) -> AsyncIterator[dict[str, Any]]:
        """The job's events after `after`, oldest first, live until its terminal event, until it has ended or
        is deleted, or until `api_key` is revoked."""
        follower = _Follower(api_key)
        reader = self._reader(job_id, after)
        reader.followers.add(follower)
        try:
            # The backlog is read here: it may lie before what the hub hands out (a follower joining others, or
            # resuming from Last-Event-ID). The job's reads go on from no later than `after`, so the backlog (up
            # to the stream's end now) and its batches leave no gap; events seen in both are dropped by seq.
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
            reader.followers.discard(follower)  # the loop drops a job left without followers after its read

    def _reader(self, job_id: str, after: int) -> _JobReader:
        """The job's reader, added now if it has none, reading on from no later than `after`."""
        reader = self._readers.get(job_id)
        if reader is None:
            reader = self._readers[job_id] = _JobReader(after)
            SSE_READERS.inc()
            if self._loop is None:
                self._loop = asyncio.create_task(self._run(), name="event hub")
            elif self._waiting and not self._woken:  # its read does not include the new job: read again, with it
                self._woken = True
                ring = asyncio.create_task(self._ring())
                self._rings.add(ring)
                ring.add_done_callback(self._rings.discard)
        reader.after = min(reader.after, after)
        return reader

    async def _ring(self) -> None:
        """End the loop's read through its wake stream, not by cancelling it: redis-py closes the connection of a
        cancelled command, and each job followed would cost a reconnect (TCP, HELLO, AUTH, a Sentinel lookup)."""
        with contextlib.suppress(Exception):  # Redis failing: the read fails too, or returns by itself in BLOCK_MS
            await self.store.jobs.wake(self._wake)

    def _end(self, job_id: str, end: Delivery = None) -> None:
        reader = self._readers.pop(job_id)
        SSE_READERS.dec()
        for follower in reader.followers:
            follower.inbox.put_nowait(end)

    async def _run(self) -> None:
        try:
            await self._read_all()
        except Exception as exc:  # Redis down past the store's retries: the streams break, their clients resume
            for job_id in list(self._readers):
                self._end(job_id, exc)
        finally:
            # in the same step as the last await's outcome: a follower arriving later starts a new loop
            self._loop = None

    async def _read_all(self) -> None:
        """Until no job is followed."""
        next_check = 0.0
        while True:
            for job_id in [job_id for job_id, reader in self._readers.items() if not reader.followers]:
                self._end(job_id)
            if not self._readers:
                return
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + BLOCK_MS / 1000
                await self._check(self._readers, keys=True)
            elif new := {job_id: reader for job_id, reader in self._readers.items() if not reader.checked}:
                await self._check(new, keys=False)  # their keys were just checked by their requests
            if not self._readers:
                return
            self._waiting, self._woken = True, False
            try:
                batches = await self.store.jobs.read_events_of(
                    {job_id: reader.after for job_id, reader in self._readers.items()}, block_ms=BLOCK_MS,
                    wake=self._wake)
            finally:
                self._waiting = False
            for job_id, events in batches.items():
                if (reader := self._readers.get(job_id)) is None:
                    continue
                reader.after, reader.quiet = events[-1]["seq"], False
                for follower in reader.followers:
                    follower.inbox.put_nowait(events)
                if events[-1]["type"] in TERMINAL_EVENTS:
                    self._end(job_id)

    async def _check(self, readers: dict[str, _JobReader], *, keys: bool) -> None:
        """End the streams of revoked keys (with `keys`), and of the jobs among `readers` that are deleted (or
        expired) or have ended with every event read, of those that were quiet since their last check."""
        if keys:
            followers = [follower for reader in readers.values() for follower in reader.followers]
            revoked = await self.store.tenants.unknown({follower.api_key for follower in followers})
            for reader in readers.values():
                for follower in [follower for follower in reader.followers if follower.api_key in revoked]:
                    reader.followers.discard(follower)  # its stream ends (its client's reconnection is refused)
                    follower.inbox.put_nowait(None)
        quiet = [job_id for job_id, reader in readers.items() if reader.quiet]
        for reader in readers.values():
            reader.quiet = reader.checked = True
        for job_id, job in zip(quiet, await self.store.jobs.get_many(quiet), strict=True):
            # its terminal event came with its end (JobStore.finish): one it never had (ended by an older worker
            # that died) never comes
            reader = self._readers.get(job_id)
            if reader is not None and (job is None or (job.terminal and job.events <= reader.after)):
                self._end(job_id)
