"""A tenant's open event streams, counted in Redis across every API process: one lease a stream, in a sorted set of
the tenant's (member -> when the lease lapses, on Redis's clock). A process renews its streams' leases while they
are open and drops each as it ends; those of a process that died lapse within LEASE_S, and the next stream opened
for the tenant clears them. The set itself expires LEASE_S after its last renewal."""

from __future__ import annotations

import math

from heavy.store.connection import RedisClient
from heavy.store.keys import Keys

LEASE_S = 30.0  # an open stream's lease lasts this long unless renewed: how long a dead process's streams count
RENEW_S = LEASE_S / 3  # how often a process renews its open streams' leases (two renewals may fail in a row)

# KEYS: the tenant's streams set, the tenant's hash; ARGV: member, the deployment's cap (the tenant's own, its hash's
# max_streams, wins), lease ms -> {1, 0, cap} when the stream may open (its lease taken), else {0, ms until the
# earliest lease lapses unless renewed, cap}
_ACQUIRE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local cap = tonumber(redis.call('HGET', KEYS[2], 'max_streams') or ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= cap then
  local earliest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, tonumber(earliest[2]) - now, cap}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, 0, cap}
"""

# KEYS: tenants' streams sets; ARGV: lease ms, then for each set the number of its members and those members ->
# their leases extended (those still held: a lease dropped meanwhile is not taken again)
_RENEW = """
local t = redis.call('TIME')
local until_ms = t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[1])
local at = 2
for k = 1, #KEYS do
  local n = tonumber(ARGV[at])
  for i = at + 1, at + n do redis.call('ZADD', KEYS[k], 'XX', until_ms, ARGV[i]) end
  redis.call('PEXPIRE', KEYS[k], ARGV[1])
  at = at + n + 1
end
"""


class StreamLeases:
    def __init__(self, redis: RedisClient, keys: Keys) -> None:
        self.redis, self.keys = redis, keys
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)

    async def acquire(self, tenant: str, member: str, cap: int) -> tuple[float, int] | None:
        """Take a lease on a stream `member` of the tenant's: None when taken, else (the tenant has its cap of
        streams open: its own, else `cap`) the seconds until its earliest lease lapses unless renewed, at least 1,
        and that cap."""
        taken, wait_ms, held_cap = await self._acquire(keys=[self.keys.tenant_streams(tenant),
                                                             self.keys.tenant(tenant)],
                                                       args=[member, cap, int(LEASE_S * 1000)])
        return None if taken else (max(1.0, math.ceil(int(wait_ms) / 1000)), int(held_cap))

    async def renew(self, members: dict[str, list[str]]) -> None:
        """Extend the leases of the open streams, tenant -> members, in one round trip (one script: on a cluster
        the store's keys share a slot)."""
        if not members:
            return
        args: list[str | int] = [int(LEASE_S * 1000)]
        for names in members.values():
            args += [len(names), *names]
        await self._renew(keys=[self.keys.tenant_streams(tenant) for tenant in members], args=args)

    async def release(self, tenant: str, member: str) -> None:
        await self.redis.zrem(self.keys.tenant_streams(tenant), member)
