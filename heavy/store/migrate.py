"""Copy a job store from one Redis deployment to another under the target's key names (`heavy store migrate`).

On a Redis Cluster every store key carries the prefix's hash tag (`heavy:{heavy}:...`, Keys.on_one_slot), on one
server or under Sentinel it does not, so moving a deployment between them renames every key. Each key is copied
whole with DUMP/RESTORE: its type, its contents and its time to live; a stream keeps its consumer groups, their
last-delivered ids and pending entries (the RDB form a DUMP is carries them), so a running job's claim and the
queue's backlog survive the move. The page cache is skipped: it is a cache.

The service must be stopped while it runs (deploy/README.md): a key written after its copy would be lost. What the
store records of a running service is checked first (`live_service`): the queue's consumers (a worker polls the
queue every half second and renews its jobs' leases every third of the lease) and its pending entries (a running
job's lease). DUMP and RESTORE are tried on one key before any is copied: a managed Redis may rename or disable
them, and a target older than the source cannot read its DUMPs."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from redis import exceptions as redis_errors

from heavy.store.connection import REDIS_FAILURES, RedisClient
from heavy.store.errors import StoreError
from heavy.store.keys import GROUP, Keys

BATCH = 100  # keys per round trip: DUMPs of event streams can be large
SHOWN_CONFLICTS = 5  # target keys named in the refusal
NO_EXPIRY = -1  # PTTL of a key without a time to live
GONE = -2  # PTTL of a key that is not there (it expired since the scan)
PROBE_TTL_MS = 10_000  # the target's probe key goes away by itself should its DEL be refused too
SHOWN_LIVE = 5  # workers and jobs named when a live service is found


class ServiceRunning(StoreError):
    """The source shows a service still at work on it (workers polling the queue, jobs whose lease is fresh)."""


class MigrationRefused(StoreError):
    """The target already holds some of the keys, and replacing them was not asked for."""


@dataclass(frozen=True)
class LiveService:
    """What a source store shows of a service at work on it, within the workers' lease."""

    workers: list[tuple[str, float]]  # a worker (the queue's consumer), seconds since it polled or renewed a lease
    jobs: list[tuple[str, str, float]]  # a job, the worker holding it, seconds since its lease was renewed

    def __bool__(self) -> bool:
        return bool(self.workers or self.jobs)

    def describe(self) -> str:
        workers = [f"{name} ({idle:.0f} s ago)" for name, idle in self.workers]
        jobs = [f"{job} on {name} ({idle:.0f} s ago)" for job, name, idle in self.jobs]
        return (f"{len(workers)} worker(s) active on the queue{_listed(workers)}; "
                f"{len(jobs)} running job(s) with a fresh lease{_listed(jobs)}")


def _listed(items: list[str]) -> str:
    return f": {', '.join(items[:SHOWN_LIVE])}{', ...' if len(items) > SHOWN_LIVE else ''}" if items else ""


@dataclass
class Migration:
    """What a migration copies (or, in a dry run, would copy): key counts by kind, the target keys that exist, and
    what the source shows of a service still running on it."""

    kinds: Counter[str] = field(default_factory=Counter)
    existing: list[str] = field(default_factory=list)
    copied: int = 0
    live: LiveService = field(default_factory=lambda: LiveService([], []))

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
        if rest.endswith(":appends"):
            return "job appends"
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


async def live_service(redis: RedisClient, keys: Keys, lease_s: float) -> LiveService:
    """Workers that touched the queue, and jobs whose lease was renewed, less than `lease_s` ago: a live worker
    polls the queue (XREADGROUP, XAUTOCLAIM) twice a second and renews its leases (XCLAIM) every third of the lease,
    and each of these resets its consumer's idle time; a stopped one's grow past the lease."""
    lease_ms = lease_s * 1000
    try:
        consumers = await redis.xinfo_consumers(keys.jobs_stream, GROUP)
    except redis_errors.ResponseError as exc:  # no queue, or no group on it: no worker ever ran here
        if "no such key" in str(exc) or "NOGROUP" in str(exc):
            return LiveService([], [])
        raise
    workers = [(c["name"].decode(), c["idle"] / 1000) for c in consumers if c["idle"] < lease_ms]
    pending = sum(c["pending"] for c in consumers)
    entries = await redis.xpending_range(keys.jobs_stream, GROUP, "-", "+", pending) if pending else []
    fresh = [entry for entry in entries if entry["time_since_delivered"] < lease_ms]
    async with redis.pipeline(transaction=False) as pipe:  # which job each entry is
        for entry in fresh:
            pipe.xrange(keys.jobs_stream, entry["message_id"], entry["message_id"])
        found = await pipe.execute() if fresh else []
    jobs = [(_job_of(rows) or entry["message_id"].decode(), entry["consumer"].decode(),
             entry["time_since_delivered"] / 1000) for entry, rows in zip(fresh, found, strict=True)]
    return LiveService(workers, jobs)


def _job_of(rows: list) -> str:
    """The job id of a `jobs` stream entry read with XRANGE ("" when it was deleted since)."""
    return rows[0][1][b"job"].decode() if rows else ""


async def migrate(source: RedisClient, source_keys: Keys, target: RedisClient, target_keys: Keys, *,
                  lease_s: float, force: bool = False, replace: bool = False, dry_run: bool = False) -> Migration:
    """Copy every store key of `source` (named under `source_keys`) to `target` (under `target_keys`); both clients
    answer bytes. Refuses, with nothing written: when the source shows a service at work on it within `lease_s`
    (ServiceRunning), unless `force`; when the target holds any of the names (MigrationRefused), unless `replace`;
    when either Redis refuses DUMP or RESTORE. A dry run only counts, and says what it found live. A Redis that
    cannot be reached is a StoreError naming which one."""
    for side, redis in (("source", source), ("target", target)):
        try:
            await redis.ping()
        except REDIS_FAILURES as exc:
            raise StoreError(f"cannot reach the {side} Redis: {exc}") from exc
    live = await live_service(source, source_keys, lease_s)
    if live and not force and not dry_run:
        raise ServiceRunning(f"the source store is in use: {live.describe()}; stop the API and the workers first "
                             f"(a stopped worker's jobs look live for the lease, {lease_s:g} s), or --force copies "
                             "anyway: what they write after its copy is lost")
    names = [name async for name in store_keys(source, source_keys)]
    renamed = {name: target_keys.prefix + name[len(source_keys.prefix):] for name in names}
    migration = Migration(Counter(kind_of(name, source_keys) for name in names), live=live)
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
    if names:
        await _try_dump_and_restore(source, names[0], target, target_keys.prefix + "migrate-probe")
    for batch in _batches(names):
        try:
            migration.copied += await _copy(source, target, batch, renamed, replace)
        except redis_errors.ResponseError as exc:  # BUSYKEY (written since the check), a payload it cannot read
            raise StoreError(f"the target refused a key ({_reason(exc)}) with {migration.copied} of the {len(names)} "
                             "keys copied before it; once that is put right, --replace copies them all again") from exc
    return migration


async def _try_dump_and_restore(source: RedisClient, name: str, target: RedisClient, probe: str) -> None:
    """DUMP one source key and RESTORE it on the target under `probe` (then deleted; it expires anyway), so that a
    command either side renamed or disabled (managed services do), or a payload the target cannot read, is refused
    before anything is copied."""
    try:
        payload = await source.dump(name)
    except redis_errors.ResponseError as exc:
        raise _refused("source", "DUMP", exc) from exc
    if payload is None:  # expired since the scan: the copy skips it, and finds out with the next key
        return
    try:
        await target.restore(probe, PROBE_TTL_MS, payload, replace=True)
    except redis_errors.ResponseError as exc:
        raise _refused("target", "RESTORE", exc) from exc
    await target.delete(probe)


def _reason(exc: redis_errors.ResponseError) -> str:
    """Redis's error without the command's arguments, which a pipeline's error and an unknown command's quote: a
    DUMP payload's bytes."""
    return str(exc).rsplit("caused error: ", 1)[-1].split(", with args")[0].lstrip("(\"")


def _refused(side: str, command: str, exc: redis_errors.ResponseError) -> StoreError:
    return StoreError(f"the {side} Redis refused {command} ({_reason(exc)}): the copy needs DUMP on the source and "
                      "RESTORE on the target (deploy/README.md); nothing was copied")


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
