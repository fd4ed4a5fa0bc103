"""The `jobs` stream and its consumer group `workers`: a job is claimed by one worker, kept alive by lease
renewal while it runs, and claimed by another (XAUTOCLAIM) once its entry sits idle past the lease."""

from __future__ import annotations

from dataclasses import dataclass

from redis.exceptions import ResponseError

from heavy.store import scripts
from heavy.store.connection import RedisClient
from heavy.store.keys import GROUP, Keys


def quiet_gap_ms(lease_ms: int) -> int:
    """How long no worker reaching the queue is an outage, not a lull: a live worker polls it twice a second when it
    has a free slot, and renews its leases every third of the lease when it has none. (A lull taken for one only
    delays a dead worker's takeover, by the lull's length.)"""
    return lease_ms // 2


@dataclass(frozen=True)
class Claim:
    entry_id: str  # the stream entry: acknowledge it when the job is finished for good
    job_id: str


class JobQueue:
    def __init__(self, redis: RedisClient, keys: Keys | None = None) -> None:
        self.redis, self.keys = redis, keys or Keys()
        self._renew = redis.register_script(scripts.RENEW)
        self._claim_abandoned = redis.register_script(scripts.CLAIM_ABANDONED)
        self._drop_consumer = redis.register_script(scripts.DROP_CONSUMER)

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.keys.jobs_stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def claim_new(self, consumer: str, *, count: int = 1, block_ms: int = 1000) -> list[Claim]:
        reply = await self.redis.xreadgroup(GROUP, consumer, {self.keys.jobs_stream: ">"}, count=count,
                                            block=block_ms)
        return [Claim(entry_id, fields["job"]) for _, entries in reply or [] for entry_id, fields in entries]

    async def claim_abandoned(self, consumer: str, *, lease_ms: int, count: int = 1) -> list[Claim]:
        """Entries of dead workers: pending and idle for longer than the lease, not counting an outage that cut
        every worker off from Redis (scripts.CLAIM_ABANDONED)."""
        entries = await self._claim_abandoned(keys=[self.keys.jobs_stream, self.keys.workers_seen],
                                              args=[GROUP, consumer, lease_ms, quiet_gap_ms(lease_ms), count])
        # an entry is [id, [field, value, ...]]; a deleted one's fields are empty (Redis 6.2) or it is left out
        return [Claim(entry_id, dict(zip(fields[::2], fields[1::2], strict=True))["job"])
                for entry_id, fields in entries if fields]

    async def renew(self, consumer: str, entry_ids: list[str], *, lease_ms: int) -> list[str]:
        """Reset the idle time of the entries this worker runs, so no one else claims them; returns the entries
        it no longer owns (another worker took them over while this one was stalled)."""
        if not entry_ids:
            return []
        return await self._renew(keys=[self.keys.jobs_stream, self.keys.workers_seen],
                                 args=[GROUP, consumer, quiet_gap_ms(lease_ms), *entry_ids])

    async def ack(self, entry_id: str) -> None:
        """Done with the entry for good: off the pending list and out of the stream in one step (MULTI), so a
        process dying in between leaves no entry the depth gauge counts for ever."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.keys.jobs_stream, GROUP, entry_id)
            pipe.xdel(self.keys.jobs_stream, entry_id)
            await pipe.execute()

    async def forget_gone_workers(self, idle_ms: int) -> list[str]:
        """Drop the group's consumers idle for over `idle_ms` with no entry pending: workers gone. Each worker start
        names a consumer of its own, which Redis keeps until told: a deployment's restarts piled them up in the
        group for ever. One with entries pending is kept (until another worker has claimed them), and a live worker
        dropped by mistake is named again by its next read. The names dropped."""
        consumers = await self.redis.xinfo_consumers(self.keys.jobs_stream, GROUP)
        idle = [c["name"] for c in consumers if c["pending"] == 0 and c["idle"] > idle_ms]
        dropped = [await self._drop_consumer(keys=[self.keys.jobs_stream], args=[GROUP, name]) for name in idle]
        return [name for name, done in zip(idle, dropped, strict=True) if done]

    async def pending(self) -> int:
        info = await self.redis.xpending(self.keys.jobs_stream, GROUP)
        return int(info["pending"])

    async def depth(self) -> int:
        return int(await self.redis.xlen(self.keys.jobs_stream))
