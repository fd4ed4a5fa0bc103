"""Copy a job store from one Redis deployment to another under the target's key names (`heavy store migrate`).

On a Redis Cluster every store key carries the prefix's hash tag (`heavy:{heavy}:...`, Keys.on_one_slot), on one
server or under Sentinel it does not, so moving a deployment between them renames every key. Each key is copied
whole with DUMP/RESTORE: its type, its contents and its time to live; a stream keeps its consumer groups, their
last-delivered ids and pending entries (the RDB form a DUMP is carries them), so a running job's claim and the
queue's backlog survive the move. The page cache is skipped: it is a cache.

The service must be stopped while it runs (deploy/README.md): a key written after its copy would be lost."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from redis import exceptions as redis_errors

from heavy.store.connection import RedisClient
from heavy.store.errors import StoreError
from heavy.store.keys import Keys

BATCH = 100  # keys per round trip: DUMPs of event streams can be large
SHOWN_CONFLICTS = 5  # target keys named in the refusal
NO_EXPIRY = -1  # PTTL of a key without a time to live
GONE = -2  # PTTL of a key that is not there (it expired since the scan)


class MigrationRefused(StoreError):
    """The target already holds some of the keys, and replacing them was not asked for."""


@dataclass
class Migration:
    """What a migration copies (or, in a dry run, would copy): key counts by kind, and the target keys that exist."""

    kinds: Counter[str] = field(default_factory=Counter)
    existing: list[str] = field(default_factory=list)
    copied: int = 0

    @property
    def keys(self) -> int:
        return sum(self.kinds.values())


def kind_of(name: str, keys: Keys) -> str:
    """A store key's kind, for the dry run's counts: `job`, `job events`, `job report`, `job checkpoint`, `tenant`,
    `api key`, ... (the first part of its name after the prefix)."""
    rest = name[len(keys.prefix):]
    if rest.startswith("job:"):
        if rest.endswith(":events"):
            return "job events"
        if rest.endswith(":report"):
            return "job report"
        return "job checkpoint" if ":traj:" in rest else "job"
    first = rest.split(":", 1)[0]
    return {"apikey": "api key", "idem": "idempotency key"}.get(first, first)


async def store_keys(redis: RedisClient, keys: Keys) -> AsyncIterator[str]:
    """Every key of the store under `keys` but the page cache's (`redis` answers bytes: DUMP payloads are)."""
    pattern = "".join(f"\\{char}" if char in "*?[]\\" else char for char in keys.prefix) + "*"
    async for raw in redis.scan_iter(match=pattern, count=1000):
        name = raw.decode()
        if not name.startswith(keys.pages):
            yield name


async def migrate(source: RedisClient, source_keys: Keys, target: RedisClient, target_keys: Keys, *,
                  replace: bool = False, dry_run: bool = False) -> Migration:
    """Copy every store key of `source` (named under `source_keys`) to `target` (under `target_keys`); both clients
    answer bytes. Refuses (MigrationRefused, nothing written) when the target holds any of the names, unless
    `replace`; a dry run only counts. A Redis that cannot be reached is a StoreError naming which one."""
    for side, redis in (("source", source), ("target", target)):
        try:
            await redis.ping()
        except (redis_errors.RedisError, redis_errors.RedisClusterException) as exc:
            raise StoreError(f"cannot reach the {side} Redis: {exc}") from exc
    names = [name async for name in store_keys(source, source_keys)]
    renamed = {name: target_keys.prefix + name[len(source_keys.prefix):] for name in names}
    migration = Migration(Counter(kind_of(name, source_keys) for name in names))
    for batch in _batches(names):
        async with target.pipeline(transaction=False) as pipe:
            for name in batch:
                pipe.exists(renamed[name])
            found = await pipe.execute()
        migration.existing += [renamed[name] for name, there in zip(batch, found, strict=True) if there]
    if dry_run:
        return migration
    if migration.existing and not replace:
        shown = ", ".join(migration.existing[:SHOWN_CONFLICTS])
        raise MigrationRefused(f"the target already holds {len(migration.existing)} of the {len(names)} keys "
                               f"({shown}{', ...' if len(migration.existing) > SHOWN_CONFLICTS else ''}); "
                               "nothing was copied (--replace overwrites them)")
    for batch in _batches(names):
        try:
            migration.copied += await _copy(source, target, batch, renamed, replace)
        except redis_errors.ResponseError as exc:  # BUSYKEY (written since the check), a payload it cannot read
            raise StoreError(f"the target refused a key ({exc}) with {migration.copied} of the {len(names)} keys "
                             "copied before it; once that is put right, --replace copies them all again") from exc
    return migration


async def _copy(source: RedisClient, target: RedisClient, batch: list[str], renamed: dict[str, str],
                replace: bool) -> int:
    async with source.pipeline(transaction=False) as pipe:
        for name in batch:
            pipe.dump(name)
            pipe.pttl(name)
        answers = await pipe.execute()
    restores = 0
    async with target.pipeline(transaction=False) as pipe:
        for name, payload, ttl_ms in zip(batch, answers[::2], answers[1::2], strict=True):
            if payload is None or ttl_ms == GONE:  # expired since the scan
                continue
            pipe.restore(renamed[name], 0 if ttl_ms == NO_EXPIRY else ttl_ms, payload, replace=replace)
            restores += 1
        await pipe.execute()
    return restores


def _batches(names: list[str]) -> list[list[str]]:
    return [names[start:start + BATCH] for start in range(0, len(names), BATCH)]
