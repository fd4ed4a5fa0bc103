"""A tenant's job list as the API pages it: newest first, all of it (the tenant's sorted set) or only the jobs in
some statuses (the tenant's per-status sorted sets, which the scripts move a job between as its status changes).

The sets are kept right here, as lists are read: jobs whose retention is over leave them (Redis expires a job's
keys, not its entries in these sets), and jobs that a process older than the sets submitted or deleted are put
right (REINDEX).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Collection

from heavy.store import scripts
from heavy.store.connection import RedisClient
from heavy.store.keys import Keys

READ_BATCH = 500
RECHECK_S = 60  # how far back the newest jobs are checked to be on their status sets again (scripts.UNINDEXED)


class JobList:
    def __init__(self, redis: RedisClient, keys: Keys) -> None:
        self.redis, self.keys = redis, keys
        self._reindex = redis.register_script(scripts.REINDEX)
        self._unindexed = redis.register_script(scripts.UNINDEXED)

    async def page(self, tenant: str, offset: int, limit: int, statuses: Collection[str]) -> tuple[list[str], int]:
        """A page of the tenant's job ids, newest first, and how many it has; with `statuses`, of its jobs in one of
        them (read from its status sets). Jobs whose keys expired leave the list and the sets first."""
        await self._drop_expired(tenant)
        if statuses:
            await self._index_unindexed(tenant)
            return await self._ids_in(tenant, sorted(statuses), offset, limit)
        key = self.keys.tenant_jobs(tenant)
        return await self.redis.zrevrange(key, offset, offset + limit - 1), await self.redis.zcard(key)

    async def _drop_expired(self, tenant: str) -> None:
        """Jobs whose retention is over leave the list and the status sets, so the totals count only jobs that are
        there and the sets do not keep the ids of every job ever ended (a page meets only the newest)."""
        due = await self.redis.zrangebyscore(self.keys.tenant_expiring(tenant), "-inf", time.time(), start=0,
                                             num=READ_BATCH)
        if due:  # this clock may run ahead of Redis's: a job not expired yet stays on the sets (REINDEX)
            await self.reindex(tenant, due)

    async def _ids_in(self, tenant: str, statuses: list[str], offset: int, limit: int) -> tuple[list[str], int]:
        """A page of the ids in the status sets of `statuses` (newest first, as the tenant's list orders them: by
        created time, then id, descending) and how many they hold."""
        sets = [self.keys.tenant_status_jobs(tenant, status) for status in statuses]
        if len(sets) == 1:
            ids = await self.redis.zrevrange(sets[0], offset, offset + limit - 1)
            return ids, await self.redis.zcard(sets[0])
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in sets:  # the page can only come from each set's first offset + limit
                pipe.zrevrange(key, 0, offset + limit - 1, withscores=True)
                pipe.zcard(key)
            replies = await pipe.execute()
        newest_first = heapq.merge(*replies[::2], key=lambda pair: (pair[1], pair[0]), reverse=True)
        page = [job_id for job_id, _ in itertools.islice(newest_first, offset, offset + limit)]
        return page, sum(replies[1::2])

    async def reindex(self, tenant: str, job_ids: list[str]) -> None:
        """Put each job on the status set of the status it has now (off the list and every set if it is gone)."""
        k = self.keys
        for start in range(0, len(job_ids), READ_BATCH):
            batch = job_ids[start : start + READ_BATCH]
            await self._reindex(keys=[k.tenant_jobs(tenant), k.tenant_expiring(tenant),
                                      *k.tenant_status_indexes(tenant), *(k.job(job_id) for job_id in batch)],
                                args=batch)

    async def _index_unindexed(self, tenant: str) -> None:
        """Jobs on the tenant's list and on no status set, or on a set and off the list, are put right (REINDEX):
        a store's older than the sets (all of them, on the tenant's first filtered list) and, during a rolling
        upgrade, those a process older than the sets submits (list only) or deletes (its set kept), whenever that
        happens: no marker says a tenant is done for good."""
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
