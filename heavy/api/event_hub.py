"""Live job events for an API process's followers: a few blocking reads for all the jobs followed, however many.

A follower used to run its own blocking XREAD, holding one of the store's pooled connections for up to a second at
a time: a few hundred followers (a dashboard on a big screen, many users watching one job, `heavy jobs watch`
scripts) took every connection, and then the followers, job creation and readiness checks waited for one and failed
("Too many connections"). One reader per followed job fixed that for many followers of a job, but not for many
jobs followed (a dashboard of many running jobs, many users each watching their own): past ~100 the readers held
the pool again. Here a read task reads the streams of up to JOBS_PER_READ followed jobs in one blocking XREAD (one
connection; on a cluster the store's keys share one slot, so the multi-key read is legal there too), at most READS
of them, hands each job's batch to all of its followers, and checks their keys (one round trip for all of them)
and the quiet jobs' ends (one more) once per BLOCK_MS; a follower only reads its own backlog, without blocking. A
job added to a read while it waits is not in it: the read also names a wake stream of its own, and an entry there
ends it, so it is issued again with the job (cancelling it instead would close its connection: a reconnect per job
followed)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from heavy.metrics import SSE_READERS
from heavy.store import Store, StoreError
from heavy.store.jobs import Wake
from heavy.store.records import TERMINAL, TERMINAL_EVENTS

BLOCK_MS = 1000  # how long one read waits for new events; the followers' keys and quiet jobs are checked as often
# Each time a read is issued, this process packs and Redis looks up every stream it names: one read over a thousand
# busy jobs cost ~4 ms of this process's CPU and ~1.4 ms of Redis's per event (measured). So the jobs fill reads of
# up to JOBS_PER_READ, at most READS of them (one pooled connection each while it waits), then share them evenly.
JOBS_PER_READ = 128
READS = 8

# what the hub hands a follower: a batch of events, the reads' failure, or None: the stream ends
Delivery = list[dict[str, Any]] | Exception | None


class _Follower:
    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.inbox: asyncio.Queue[Delivery] = asyncio.Queue()


class _Read:
    """One blocking XREAD over its share of the followed jobs, issued again and again by its loop while it has any."""

    def __init__(self, wake: Wake) -> None:
        self.jobs: dict[str, _JobReader] = {}
        self.loop: asyncio.Task | None = None
        self.wake = wake  # named in the read too: an entry there ends it early
        self.waiting = False  # the read is in flight: a job added now is not in it
        self.woken = False  # that read was woken already


@dataclass(eq=False)
class _JobReader:
    read: _Read  # the one that reads the job's stream
    after: int  # the next read of the job's stream starts after this event
    followers: set[_Follower] = field(default_factory=set)
    quiet: bool = True  # no events read since its end was last checked (a new job's is checked at once)
    checked: bool = False


class EventHub:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._readers: dict[str, _JobReader] = {}  # the followed jobs
        self._reads = [_Read(store.jobs.wake_stream()) for _ in range(READS)]
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
            reader.followers.discard(follower)  # its read drops a job left without followers after it returns

    def _reader(self, job_id: str, after: int) -> _JobReader:
        """The job's reader, added now if it has none, reading on from no later than `after`."""
        reader = self._readers.get(job_id)
        if reader is None:
            read = next((read for read in self._reads if len(read.jobs) < JOBS_PER_READ), None) or \
                min(self._reads, key=lambda read: len(read.jobs))
            reader = self._readers[job_id] = read.jobs[job_id] = _JobReader(read, after)
            SSE_READERS.inc()
            if read.loop is None:
                read.loop = asyncio.create_task(self._run(read), name="event hub read")
            elif read.waiting and not read.woken:  # the read in flight does not include the job: read again, with it
                read.woken = True
                ring = asyncio.create_task(self._ring(read.wake))
                self._rings.add(ring)
                ring.add_done_callback(self._rings.discard)
        reader.after = min(reader.after, after)
        return reader

    async def _ring(self, wake: Wake) -> None:
        """End a read through its wake stream, not by cancelling it: redis-py closes the connection of a cancelled
        command, and each job followed would cost a reconnect (TCP, HELLO, AUTH, a Sentinel lookup)."""
        with contextlib.suppress(Exception):  # Redis failing: the read fails too, or returns by itself in BLOCK_MS
            await self.store.jobs.wake(wake)

    def _end(self, job_id: str, end: Delivery = None) -> None:
        reader = self._readers.pop(job_id)
        del reader.read.jobs[job_id]
        SSE_READERS.dec()
        for follower in reader.followers:
            follower.inbox.put_nowait(end)

    async def _run(self, read: _Read) -> None:
        try:
            await self._read_all(read)
        except Exception as exc:  # Redis down past the store's retries: the streams break, their clients resume
            for job_id in list(read.jobs):
                self._end(job_id, exc)
        finally:
            # in the same step as the last await's outcome: a job added to it later starts a new loop
            read.loop = None

    async def _read_all(self, read: _Read) -> None:
        """Until `read` has no job."""
        next_check = 0.0
        while True:
            for job_id in [job_id for job_id, reader in read.jobs.items() if not reader.followers]:
                self._end(job_id)
            if not read.jobs:
                return
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + BLOCK_MS / 1000
                await self._check(read.jobs, keys=True)
            elif new := {job_id: reader for job_id, reader in read.jobs.items() if not reader.checked}:
                await self._check(new, keys=False)  # their keys were just checked by their requests
            if not read.jobs:
                return
            read.waiting, read.woken = True, False
            try:
                batches = await self.store.jobs.read_events_of(
                    {job_id: reader.after for job_id, reader in read.jobs.items()}, block_ms=BLOCK_MS, wake=read.wake)
            finally:
                read.waiting = False
            for job_id, events in batches.items():
                if (reader := read.jobs.get(job_id)) is None:
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
        for job_id, progress in zip(quiet, await self.store.jobs.progress_of(quiet), strict=True):
            # its terminal event came with its end (JobStore.finish): one it never had (ended by an older worker
            # that died) never comes
            reader = self._readers.get(job_id)
            if reader is not None and (progress is None or (progress[0] in TERMINAL and progress[1] <= reader.after)):
                self._end(job_id)
