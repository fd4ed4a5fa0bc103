"""Tenants and their API keys. A key is shown once at creation; Redis keeps only its sha256, mapped to the
tenant. Each tenant has limits (concurrent jobs, tokens, open event streams) and a running token count."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Collection
from dataclasses import dataclass, field

from heavy.store.connection import RedisClient
from heavy.store.errors import UnknownApiKey
from heavy.store.keys import Keys

KEY_PREFIX = "hv_"
KEY_ID_CHARS = 12


def digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    key_id: str  # the first hex digits of the digest: names the key in lists and revocation
    tenant: str
    name: str
    created: float
    secret: str = field(default="", repr=False)  # the plaintext key, only right after creation


@dataclass(frozen=True)
class Tenant:
    id: str
    max_jobs: int
    max_tokens: int
    tokens_used: int
    active_jobs: int
    tokens_reserved: int = 0  # granted to its jobs that have not ended (heavy/store/scripts.py _TAKE_SLOT_AND_GRANT)


class TenantStore:
    def __init__(self, redis: RedisClient, keys: Keys | None = None, *, default_max_jobs: int = 4,
                 default_max_tokens: int = 50_000_000) -> None:
        self.redis, self.keys = redis, keys or Keys()
        self.default_max_jobs, self.default_max_tokens = default_max_jobs, default_max_tokens

    async def create_key(self, tenant: str, name: str = "") -> ApiKey:
        if not tenant or ":" in tenant or len(tenant) > 64:
            raise ValueError("tenant must be 1-64 characters without ':'")
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key_digest = digest(secret)
        created = time.time()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.apikey(key_digest), mapping={"tenant": tenant, "name": name, "created": created})
            pipe.sadd(self.keys.tenant_keys(tenant), key_digest)
            pipe.sadd(self.keys.tenants, tenant)
            pipe.hsetnx(self.keys.tenant(tenant), "created", created)
            await pipe.execute()
        return ApiKey(key_digest[:KEY_ID_CHARS], tenant, name, created, secret)

    async def resolve(self, api_key: str) -> str:
        """The tenant of a presented key; UnknownApiKey if it is not known (or revoked)."""
        tenant = await self.redis.hget(self.keys.apikey(digest(api_key)), "tenant")
        if tenant is None:
            raise UnknownApiKey("unknown or revoked API key")
        return tenant

    async def unknown(self, api_keys: Collection[str]) -> set[str]:
        """The keys among `api_keys` that resolve to no tenant (revoked, or never made), in one round trip."""
        ordered = list(api_keys)
        async with self.redis.pipeline(transaction=False) as pipe:
            for api_key in ordered:
                pipe.hget(self.keys.apikey(digest(api_key)), "tenant")
            tenants = await pipe.execute()
        return {api_key for api_key, tenant in zip(ordered, tenants, strict=True) if tenant is None}

    async def list_keys(self, tenant: str | None = None) -> list[ApiKey]:
        tenants = [tenant] if tenant else sorted(await self.redis.smembers(self.keys.tenants))
        keys: list[ApiKey] = []
        for name in tenants:
            for key_digest in sorted(await self.redis.smembers(self.keys.tenant_keys(name))):
                data = await self.redis.hgetall(self.keys.apikey(key_digest))
                if data:
                    keys.append(ApiKey(key_digest[:KEY_ID_CHARS], name, data.get("name", ""),
                                       float(data["created"])))
        return keys

    async def revoke(self, key_id: str) -> ApiKey:
        """Revoke the key whose id (digest prefix) is `key_id`; it stops working at once."""
        for key in await self.list_keys():
            if key.key_id == key_id:
                for key_digest in await self.redis.smembers(self.keys.tenant_keys(key.tenant)):
                    if key_digest.startswith(key_id):
                        await self.redis.delete(self.keys.apikey(key_digest))
                        await self.redis.srem(self.keys.tenant_keys(key.tenant), key_digest)
                return key
        raise UnknownApiKey(f"no API key with id {key_id!r}")

    async def set_limits(self, tenant: str, *, max_jobs: int | None = None, max_tokens: int | None = None,
                         max_streams: int | None = None) -> None:
        """The tenant's own limits, over the deployment's (HEAVY_TENANT_MAX_JOBS, _TOKENS, _STREAMS); None keeps
        what it has."""
        limits = {name: value for name, value in (("max_jobs", max_jobs), ("max_tokens", max_tokens),
                                                  ("max_streams", max_streams)) if value is not None}
        if limits:
            await self.redis.hset(self.keys.tenant(tenant), mapping=limits)

    async def get(self, tenant: str) -> Tenant:
        data = await self.redis.hgetall(self.keys.tenant(tenant))
        active = await self.redis.scard(self.keys.tenant_active(tenant))
        return Tenant(tenant, int(data.get("max_jobs") or self.default_max_jobs),
                      int(data.get("max_tokens") or self.default_max_tokens), int(data.get("tokens_used") or 0),
                      active, int(data.get("tokens_reserved") or 0))
