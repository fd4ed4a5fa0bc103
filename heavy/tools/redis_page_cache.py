"""Opened pages shared by all workers through Redis: JSON under `heavy:page:{sha256(url)}`, expiring after a TTL.

A cache only saves fetches, so a Redis error on get or put is logged and the tool call goes on (a get misses);
the client fails fast instead of riding out an outage with long retries as the job store does.
"""

from __future__ import annotations

import json
import logging

from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from heavy.store.connection import RedisClient, redis_client
from heavy.store.keys import Keys
from heavy.tools.page_cache import Page

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 1.0
COMMAND_TIMEOUT_S = 2.0  # a 2 MB page over a LAN takes milliseconds
RETRIES = 1  # once at once: a pooled connection the server dropped (a Redis restart) is replaced, no waiting


class RedisPageCache:
    """Pages by URL for `ttl_s`; a page whose text is over `max_bytes` (UTF-8) is not stored."""

    def __init__(self, redis: RedisClient, *, ttl_s: float, max_bytes: int, keys: Keys | None = None) -> None:
        if ttl_s <= 0 or max_bytes < 1:
            raise ValueError(f"need ttl_s > 0 and max_bytes >= 1, got {ttl_s}, {max_bytes}")
        self.redis = redis
        self.ttl_ms = max(1, round(ttl_s * 1000))
        self.max_bytes = max_bytes
        self.keys = keys or Keys()

    @classmethod
    def connect(cls, url: str, *, ttl_s: float, max_bytes: int, keys: Keys | None = None) -> RedisPageCache:
        """A cache with a client of its own over `url`; no I/O until first use. Close it with `aclose()`."""
        # READONLY is retried on a new connection, as the store's is (heavy/store/__init__.py): after a failover that
        # moved the address, connections pooled to the demoted primary refused every put
        redis = redis_client(url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=COMMAND_TIMEOUT_S,
                             retry=Retry(NoBackoff(), RETRIES), retry_on_error=[redis_errors.ReadOnlyError])
        return cls(redis, ttl_s=ttl_s, max_bytes=max_bytes, keys=keys)

    async def get(self, url: str) -> Page | None:
        try:
            raw = await self.redis.get(self.keys.page(url))
        except redis_errors.RedisError as exc:
            log.warning("page cache: get of %s failed, fetching instead: %s: %s", url, type(exc).__name__, exc)
            return None
        if raw is None:
            return None
        try:
            return Page.from_dict(json.loads(raw))
        except (ValueError, TypeError) as exc:  # written by another version of Page: a miss, overwritten on put
            log.warning("page cache: unreadable entry for %s: %s", url, exc)
            return None

    async def put(self, page: Page) -> None:
        if len(page.text.encode()) > self.max_bytes:
            return
        value = json.dumps(page.to_dict(), ensure_ascii=False)
        try:
            await self.redis.set(self.keys.page(page.url), value, px=self.ttl_ms)
        except redis_errors.RedisError as exc:
            log.warning("page cache: put of %s failed: %s: %s", page.url, type(exc).__name__, exc)

    async def aclose(self) -> None:
        await self.redis.aclose()
