"""A tenant's job list as the API pages it: newest first, all of it (the tenant's sorted set) or only the jobs in
some statuses (the tenant's per-status sorted sets, which the scripts move a job between as its status changes).

A page is read from a position (an offset) or at a cursor, a job's place in the list's order (created time, then
id): a cursor's page holds its place while jobs are submitted or deleted above it, an offset's moves with them.

The sets are kept right here, as lists are read: jobs whose retention is over leave them (Redis expires a job's
keys, not its entries in these sets), and jobs that a process older than the sets submitted or deleted are put
right (REINDEX).
"""

from __future__ import annotations

import base64
import heapq
import itertools
import math
import re
import time
from collections.abc import Collection
from typing import NamedTuple

from heavy.store import scripts
from heavy.store.connection import RedisClient
from heavy.store.keys import Keys
from heavy.store.records import JobRecord

READ_BATCH = 500
RECHECK_S = 60  # how far back the newest jobs are checked to be on their status sets again (scripts.UNINDEXED)
_CURSOR = re.compile(r"(older|newer) ([0-9.e+-]+) ([0-9a-f]{32})")


class Cursor(NamedTuple):
    """A place in the list: the jobs just older than the job (`created`, `job_id`), or just newer. The list is
    ordered by both, so the place holds whatever is submitted or deleted around it (an offset moves with them)."""

    older: bool
    created: float
    job_id: str

    def encode(self) -> str:
        """Opaque to clients: they pass on what a page's links give."""
        text = f"{'older' if self.older else 'newer'} {self.created!r} {self.job_id}"
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        """ValueError unless `token` is one `encode` wrote."""
        try:
            match = _CURSOR.fullmatch(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode())
            if match is None or not math.isfinite(created := float(match[2])):
                raise ValueError
        except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors too
            raise ValueError("not a cursor this API gave") from None
        return cls(match[1] == "older", created, match[3])


class Page(NamedTuple):
    entries: list[tuple[str, float]]  # (job id, created), newest first
    total: int  # jobs on the list (filtered)
    position: int  # of them, how many come before the page's first (0: the page starts at the newest)

    def newer(self, at: Cursor | None) -> Cursor | None:
        """Where the previous page is (the jobs just newer than this one's first, or than the cursor `at` it was
        read at when it is empty); None when this one starts at the newest."""
        if self.position == 0 or not (self.entries or at):
            return None
        if not self.entries:
            return at._replace(older=False)
        job_id, created = self.entries[0]
        return Cursor(False, created, job_id)

    def older(self) -> Cursor | None:
        """Where the next page is (the jobs just older than this one's last); None when no job follows."""
        if not self.entries or self.position + len(self.entries) >= self.total:
            return None
        job_id, created = self.entries[-1]
        return Cursor(True, created, job_id)


class JobPage(NamedTuple):
    jobs: list[JobRecord]
    total: int
    position: int  # how many jobs of the list come before the page's first
    newer: Cursor | None  # the previous page's place, None at the top
    older: Cursor | None  # the next page's, None at the end


class JobList:
    def __init__(self, redis: RedisClient, keys: Keys) -> None:
        self.redis, self.keys = redis, keys
        self._reindex = redis.register_script(scripts.REINDEX)
        self._unindexed = redis.register_script(scripts.UNINDEXED)

    async def page(self, tenant: str, limit: int, statuses: Collection[str], *, offset: int = 0,
                   cursor: Cursor | None = None) -> Page:
        """A page of the tenant's jobs, newest first: from `offset`, or at `cursor`; with `statuses`, of its jobs in
        one of them (read from its status sets). Jobs whose keys expired leave the list and the sets first."""
        await self._drop_expired(tenant)
        if statuses:
            await self.index_unindexed(tenant)
            sets = [self.keys.tenant_status_jobs(tenant, status) for status in sorted(statuses)]
        else:
            sets = [self.keys.tenant_jobs(tenant)]
        if cursor is not None:
            return await self._at(sets, cursor, limit)
        return await self._from(sets, offset, limit)

    async def _drop_expired(self, *tenants: str) -> int:
        """The tenants' jobs whose retention is over leave their lists and status sets, so the totals count only jobs
        that are there and the sets do not keep the ids of every job ever ended (a page meets only the newest); how
        many were due (up to READ_BATCH a tenant)."""
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:  # one round trip however many tenants
            for tenant in tenants:
                pipe.zrangebyscore(self.keys.tenant_expiring(tenant), "-inf", now, start=0, num=READ_BATCH)
            due = await pipe.execute() if tenants else []
        for tenant, job_ids in zip(tenants, due, strict=True):
            if job_ids:  # this clock may run ahead of Redis's: a job not expired yet stays on the sets (REINDEX)
                await self.reindex(tenant, job_ids)
        return sum(len(job_ids) for job_ids in due)

    async def drop_all_expired(self) -> int:
        """`_drop_expired` for every tenant, as the workers sweep: a page does it for its own tenant only, so a
        tenant that never lists its jobs (a script submitting and following them) kept the id of every job it
        ever ended on its list, its status sets and its expiring set, for ever."""
        return await self._drop_expired(*sorted(await self.redis.smembers(self.keys.tenants)))

    async def _from(self, sets: list[str], offset: int, limit: int) -> Page:
        """The page `offset` jobs down the sets merged, newest first (by created time, then id, descending, as
        the tenant's list orders them)."""
        start = offset if len(sets) == 1 else 0  # of several, the page can only come from each one's first ones
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in sets:
                pipe.zrevrange(key, start, offset + limit - 1, withscores=True)
                pipe.zcard(key)
            replies = await pipe.execute()
        newest_first = heapq.merge(*replies[::2], key=_order, reverse=True)
        entries = list(itertools.islice(newest_first, offset - start, offset - start + limit))
        return Page(entries, sum(replies[1::2]), offset)

    async def _at(self, sets: list[str], cursor: Cursor, limit: int) -> Page:
        """The `limit` jobs of the sets merged just older (or newer) than the cursor's, newest first. Only a job
        created at the cursor's very time is compared by id: those are read whole (there is seldom more than one)."""
        created, bound = cursor.created, f"({cursor.created!r}"
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in sets:
                pipe.zrangebyscore(key, created, created)
                if cursor.older:
                    pipe.zrevrangebyscore(key, bound, "-inf", start=0, num=limit, withscores=True)
                else:
                    pipe.zrangebyscore(key, bound, "+inf", start=0, num=limit, withscores=True)
                pipe.zcount(key, bound, "+inf")
                pipe.zcard(key)
            replies = await pipe.execute()
        runs, newer = [], 0  # each set's candidates, in the order read; the jobs newer than the cursor
        for ties, beyond, above in zip(replies[::4], replies[1::4], replies[2::4], strict=True):
            if cursor.older:
                runs.append([(job_id, created) for job_id in reversed(ties) if job_id < cursor.job_id] + beyond)
            else:
                runs.append([(job_id, created) for job_id in ties if job_id > cursor.job_id] + beyond)
            newer += above + sum(job_id > cursor.job_id for job_id in ties)
        total = sum(replies[3::4])
        if cursor.older:  # before the page: the newer jobs and the cursor's own (when it is still listed)
            entries = list(itertools.islice(heapq.merge(*runs, key=_order, reverse=True), limit))
            present = any(cursor.job_id in ties for ties in replies[::4])
            return Page(entries, total, newer + present)
        entries = list(itertools.islice(heapq.merge(*runs, key=_order), limit))[::-1]
        return Page(entries, total, newer - len(entries))

    async def reindex(self, tenant: str, job_ids: list[str]) -> None:
        """Put each job on the status set of the status it has now (off the list and every set if it is gone)."""
        k = self.keys
        for start in range(0, len(job_ids), READ_BATCH):
            batch = job_ids[start : start + READ_BATCH]
            await self._reindex(keys=[k.tenant_jobs(tenant), k.tenant_expiring(tenant), k.tenant_held(tenant),
                                      *k.tenant_status_indexes(tenant), *(k.job(job_id) for job_id in batch)],
                                args=batch)

    async def index_unindexed(self, tenant: str) -> None:
        """Jobs on the tenant's list and on no status set, or on a set and off the list, are put right (REINDEX):
        a store's older than the sets (all of them, on the tenant's first filtered list) and, during a rolling
        upgrade, those a process older than the sets submits (list only) or deletes (its set kept), whenever that
        happens: no marker says a tenant is done for good. Their held jobs go on the tenant's held set too (before
        a job is held for review: the held-jobs cap counts that set)."""
        k = self.keys
        sets, listed = k.tenant_status_indexes(tenant), k.tenant_jobs(tenant)
        surplus, missing = await self._unindexed(keys=[listed, *sets, k.tenant_checked(tenant)], args=[RECHECK_S])
        if surplus == len(missing):  # the newest unindexed jobs account for the difference
            await self.reindex(tenant, missing)
            return
        async with self.redis.pipeline(transaction=False) as pipe:  # the whole list and sets, as rarely as that
            pipe.zdiff([listed, *sets])  # listed, on no set
            for key in sets:
                pipe.zdiff([key, listed])  # on a set, not listed
            replies = await pipe.execute()
        await self.reindex(tenant, [job_id for ids in replies for job_id in ids])


def _order(entry: tuple[str, float]) -> tuple[float, str]:
    """The list's order: by created time, then id."""
    job_id, created = entry
    return created, job_id
