"""The Redis job store: jobs, events, checkpoints, reports, the work queue, tenants and API keys."""

from __future__ import annotations

from dataclasses import dataclass

from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from heavy.config import Settings
from heavy.store.connection import RedisClient, is_cluster_url, redis_client
from heavy.store.errors import (
    IdempotencyConflict,
    InvalidTransition,
    JobNotFound,
    JobTakenOver,
    QuotaExceeded,
    StoreError,
    UnknownApiKey,
)
from heavy.store.jobs import JobStore
from heavy.store.keys import Keys
from heavy.store.queue import Claim, JobQueue
from heavy.store.records import JobRecord
from heavy.store.streams import StreamLeases
from heavy.store.tenants import ApiKey, Tenant, TenantStore

RECONNECT_RETRIES = 12  # ~6 s of backoff in all
POOL_WAIT_S = 10.0  # how long a command waits for a free pooled connection in a burst (heavy/store/connection.py)


@dataclass
class Store:
    redis: RedisClient
    jobs: JobStore
    queue: JobQueue
    tenants: TenantStore
    streams: StreamLeases

    @classmethod
    def connect(cls, url: str, settings: Settings | None = None, keys: Keys | None = None) -> Store:
        """A store over `url` (redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://:
        heavy/store/connection.py); no I/O until first use."""
        settings = settings or Settings()
        keys = keys or Keys()
        if is_cluster_url(url):  # the scripts' keys must share a slot (heavy/store/keys.py)
            keys = keys.on_one_slot()
        # Retries with backoff ride out a Redis restart of a few seconds (state comes back from the AOF). READONLY
        # too: the command did not run, and each retry is on a new connection, so after a failover without Sentinel
        # that moved the address (a DNS name, a virtual IP) it reaches the new primary; a pooled connection to the
        # demoted one would otherwise answer READONLY for ever. (Sentinel's connections do the same themselves.)
        # No health checks: a pooled connection broken while idle fails its command, which is retried on a new one;
        # and redis-py nests a health check's retries in each reconnect's, so a listener that accepts and closes (a
        # proxy or load balancer before a Redis that is down) hung a command for minutes instead of failing it.
        retry = Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), RECONNECT_RETRIES)
        redis = redis_client(url, pool_wait_s=POOL_WAIT_S, decode_responses=True, retry=retry,
                             retry_on_error=[redis_errors.ConnectionError, redis_errors.TimeoutError,
                                             redis_errors.ReadOnlyError])
        limits = dict(default_max_jobs=settings.tenant_max_jobs, default_max_tokens=settings.tenant_max_tokens)
        jobs = JobStore(redis, keys, retention_s=settings.job_retention_s,
                        approval_window_s=settings.approval_window_s, max_held_jobs=settings.tenant_max_held_jobs,
                        **limits)
        return cls(redis, jobs, JobQueue(redis, keys), TenantStore(redis, keys, **limits), StreamLeases(redis, keys))

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def aclose(self) -> None:
        await self.redis.aclose()


__all__ = [
    "ApiKey", "Claim", "IdempotencyConflict", "InvalidTransition", "JobNotFound", "JobQueue", "JobRecord",
    "JobStore", "JobTakenOver", "Keys", "QuotaExceeded", "Store", "StoreError", "StreamLeases", "Tenant", "TenantStore",
    "UnknownApiKey",
]
