"""The job store: job hashes, per-job event streams, checkpoints and reports, over redis-py asyncio (a tenant's job
list, and the status sets a filtered one reads: heavy/store/job_list.py; a job refused at a tenant limit:
heavy/store/refusals.py).

Every change that touches more than one key (submit with quota and idempotency, approve, finish, event append)
is one Lua script, so API processes and workers never interleave half-done updates.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from heavy.metrics import JOBS_FINISHED
from heavy.store import scripts
from heavy.store.checkpoint_log import folded, is_change
from heavy.store.connection import RedisClient
from heavy.store.errors import IdempotencyConflict, InvalidTransition, JobNotFound, JobTakenOver
from heavy.store.job_list import READ_BATCH, Cursor, JobList, JobPage
from heavy.store.keys import Keys
from heavy.store.records import (
    ACTIVE,
    AGGREGATING,
    AWAITING_APPROVAL,
    CANCELLED,
    QUEUED,
    RUNNING,
    TERMINAL,
    JobRecord,
)
from heavy.store.refusals import quota_exceeded

IDEMPOTENCY_TTL_S = 24 * 3600
WAKE_TTL_S = 3600  # a wake stream outlives its last use by this long (its process may have stopped)


@dataclass(eq=False)
class Wake:
    """A stream that a blocking read of job events names beside the jobs' (read_events_of), so that another task of
    its process can end that read early (JobStore.wake) with an entry instead of cancelling it: redis-py closes a
    connection whose command was cancelled, and the next read would reconnect."""

    key: str
    seen: str = "0-0"  # its last entry a read returned: a read from there returns at once if it was woken since


def _pairs(fields: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for name, value in fields.items():
        if isinstance(value, dict | list):
            value = json.dumps(value, ensure_ascii=False)
        elif isinstance(value, bool):
            value = "1" if value else "0"
        out += [name, "" if value is None else str(value)]
    return out


def _event_of(fields: dict[str, str]) -> dict[str, Any]:
    """An event as the stream holds it, with its `seq`."""
    return {**json.loads(fields["event"]), "seq": int(fields["seq"])}


def _event_json(event: dict[str, Any]) -> str:
    """An event as its stream entry stores it: without its seq (the script numbers it)."""
    return json.dumps({k: v for k, v in event.items() if k != "seq"}, ensure_ascii=False, default=str)


def _cancelled(job_id: str, reason: str) -> dict[str, Any]:
    """The event of a job cancelled before any worker ran it (a worker writes its own jobs' events)."""
    return {"type": "job_cancelled", "schema_version": 1, "job_id": job_id, "ts": time.time(), "reason": reason}


class JobStore:
    def __init__(self, redis: RedisClient, keys: Keys | None = None, *, default_max_jobs: int = 4,
                 default_max_tokens: int = 50_000_000, retention_s: float = 0.0,
                 approval_window_s: float = 0.0, max_held_jobs: int = 32) -> None:
        """`retention_s`: how long a job's keys stay after it ended (0: until deleted); `approval_window_s`: how
        long a job held for review waits for its approval before it is cancelled (0: for ever); `max_held_jobs`:
        how many jobs a tenant may hold for review at once."""
        self.redis, self.keys = redis, keys or Keys()
        self.approval_window_s, self.max_held_jobs = approval_window_s, max_held_jobs
        self.default_max_jobs, self.default_max_tokens = default_max_jobs, default_max_tokens
        self.retention_ms = int(retention_s * 1000)
        self._submit = redis.register_script(scripts.SUBMIT)
        self._transition = redis.register_script(scripts.TRANSITION)
        self._approve = redis.register_script(scripts.APPROVE)
        self._finish = redis.register_script(scripts.FINISH)
        self._append = redis.register_script(scripts.APPEND_EVENT)
        self._save_checkpoint = redis.register_script(scripts.SAVE_CHECKPOINT)
        self._append_checkpoint = redis.register_script(scripts.APPEND_CHECKPOINT)
        self._delete = redis.register_script(scripts.DELETE)
        self._claim_callback = redis.register_script(scripts.CLAIM_CALLBACK)
        self._settle_callback = redis.register_script(scripts.SETTLE_CALLBACK)
        self._server_time = redis.register_script(scripts.SERVER_TIME)
        self.listing = JobList(redis, self.keys)

    # --- jobs ---

    async def submit(self, tenant: str, *, question: str, mode: str, params: dict[str, Any], review: bool = False,
                     plan: dict[str, Any] | None = None, idempotency_key: str | None = None,
                     fingerprint: str = "", callback_url: str = "", callback_secret: str = ""
                     ) -> tuple[JobRecord, bool]:
        """Create a job (queued, or awaiting approval when `review`); returns (job, replayed). A repeated
        Idempotency-Key with the same fingerprint returns the first job; with another one it is a conflict."""
        job_id = uuid.uuid4().hex
        now = time.time()
        window = self.approval_window_s if review else 0  # `approve_by` is set on Redis's clock (SUBMIT)
        fields = {"id": job_id, "tenant": tenant, "status": AWAITING_APPROVAL if review else QUEUED,
                  "question": question, "mode": mode, "params": params, "review": review, "plan": plan,
                  "created": now, "updated": now, "attempts": 0, "events": 0, "tokens": 0,
                  "callback_url": callback_url, "callback_secret": callback_secret}
        k = self.keys
        if review:  # jobs a process older than the held set holds are put on it (REINDEX), so its cap counts them
            await self.listing.index_unindexed(tenant)
        stored = _pairs(fields)
        stale = ""  # the key's value once it named a job that is gone
        while True:
            outcome, detail = await self._submit(
                keys=[k.idempotency(tenant, idempotency_key or "-"), k.tenant(tenant), k.tenant_active(tenant),
                      k.tenant_jobs(tenant), k.job(job_id), k.jobs_stream, k.awaiting, k.tenant_held(tenant),
                      *k.tenant_status_indexes(tenant)],
                args=[job_id, now, int(not review), int(idempotency_key is not None), IDEMPOTENCY_TTL_S,
                      fingerprint, self.default_max_jobs, self.default_max_tokens, int(params.get("job_tokens", 0)),
                      window, stale, self.max_held_jobs, *stored],
            )
            if outcome != "replay":
                break
            previous_id, _, previous_fingerprint = detail.partition(" ")
            if previous_fingerprint != fingerprint:
                raise IdempotencyConflict("this Idempotency-Key was used with a different request")
            try:
                return await self.get(previous_id, tenant), True
            except JobNotFound:  # deleted or expired since: the key names nothing, so it is a new request
                stale = detail
        if outcome == "quota":
            raise await quota_exceeded(self, tenant, detail)
        return JobRecord.from_hash({**dict(zip(stored[::2], stored[1::2], strict=True)), "approve_by": detail}), False

    async def get(self, job_id: str, tenant: str | None = None) -> JobRecord:
        """The job; JobNotFound if absent or owned by another tenant than `tenant` (when given)."""
        data = await self.redis.hgetall(self.keys.job(job_id))
        if not data or (tenant is not None and data.get("tenant") != tenant):
            raise JobNotFound(f"no job {job_id!r}")
        return JobRecord.from_hash(data)

    async def list(self, tenant: str, *, offset: int = 0, limit: int = 20,
                   statuses: Collection[str] = ()) -> tuple[list[JobRecord], int]:
        """The tenant's jobs from `offset`, newest first, and how many it has (JobStore.page)."""
        page = await self.page(tenant, offset=offset, limit=limit, statuses=statuses)
        return page.jobs, page.total

    async def page(self, tenant: str, *, limit: int = 20, statuses: Collection[str] = (), offset: int = 0,
                   cursor: Cursor | None = None) -> JobPage:
        """The tenant's jobs, newest first, from `offset` or at `cursor`, how many it has and where the pages
        around are; with `statuses`, only jobs in one of them (and how many are), read from the tenant's status
        sets. A job whose keys expired (retention) leaves the list and the sets before the page is read (and, for
        one ended before the expiring set, as a page meets it)."""
        listed = await self.listing.page(tenant, limit, statuses, offset=offset, cursor=cursor)
        ids = [job_id for job_id, _ in listed.entries]
        rows = await self._hashes(ids)
        # Expired jobs, and (with `statuses`) jobs whose status moved between the two reads or a process older
        # than the sets changed: left out of the page, and their entries mended.
        if stale := [job_id for job_id, row in zip(ids, rows, strict=True)
                     if not row or (statuses and row["status"] not in statuses)]:
            await self.listing.reindex(tenant, stale)
        kept = [JobRecord.from_hash(row) for row in rows if row and (not statuses or row["status"] in statuses)]
        return JobPage(kept, listed.total - len(stale), listed.position, listed.newer(cursor), listed.older())

    async def _hashes(self, ids: list[str]) -> list[dict[str, str]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(self.keys.job(job_id))
            return await pipe.execute()

    async def update(self, job_id: str, *, allowed: tuple[str, ...] = (), owner: str = "", **fields: Any) -> str:
        """Set fields if the status is one of `allowed` (any when empty) and, with `owner`, that worker still holds
        the job (else JobTakenOver); returns the previous status."""
        keys = [self.keys.job(job_id)]
        if "status" in fields:  # the job moves between its tenant's status sets in the same step
            tenant = await self.redis.hget(keys[0], "tenant")  # a job's tenant never changes
            keys += self.keys.tenant_status_indexes(tenant) if tenant is not None else []
        outcome, status = await self._transition(keys=keys, args=[",".join(allowed), owner, *_pairs(fields)])
        if outcome == "missing":
            raise JobNotFound(f"no job {job_id!r}")
        if outcome == "refused":
            raise InvalidTransition(f"job {job_id} is {status}")
        if outcome == "taken":
            raise JobTakenOver(f"job {job_id} is run by {status or 'no worker'} now, not {owner}")
        return status

    async def finish(self, job: JobRecord, status: str, *, allowed: tuple[str, ...] = ACTIVE, tokens: int = 0,
                     event: dict[str, Any] | None = None, report: tuple[str, dict[str, Any]] | None = None,
                     owner: str = "", **fields: Any) -> None:
        """Move the job to a terminal status, release its concurrency slot, record its tokens and charge them to the
        tenant; its keys expire after the retention from now on, but its checkpoints, deleted now. Its terminal `event`
        and `report` (Markdown, JSON), when given, are written in the same step. With `owner`, only while that worker
        holds the job (JobTakenOver when another took it over)."""
        now = time.time()
        k = self.keys
        markdown, result = report or ("", None)
        outcome, current = await self._finish(
            keys=[k.job(job.id), k.tenant(job.tenant), k.tenant_active(job.tenant), k.callbacks, k.awaiting,
                  k.tenant_held(job.tenant), k.tenant_expiring(job.tenant), *k.tenant_status_indexes(job.tenant),
                  *k.job_parts(job.id, job.trajectories)],
            args=[job.id, ",".join(allowed), tokens, self.retention_ms, _event_json(event) if event else "",
                  markdown, json.dumps(result, ensure_ascii=False) if result is not None else "", owner,
                  *_pairs({"status": status, "finished": now, "updated": now, "control": "", "tokens": tokens,
                           **fields})],
        )
        if outcome == "missing":
            raise JobNotFound(f"no job {job.id!r}")
        if outcome == "refused":
            raise InvalidTransition(f"job {job.id} is already {current}")
        if outcome == "taken":
            raise JobTakenOver(f"job {job.id} is run by {current or 'no worker'} now, not {owner}")
        # here, where each job ends once: by a worker, or by an API process or a sweep with no worker involved (a
        # queued or held job cancelled, an approval run out)
        JOBS_FINISHED.labels(status).inc()

    async def approve(self, job_id: str, tenant: str) -> JobRecord:
        """Queue a job held for review; it takes its concurrency slot and token grant only now (QuotaExceeded when
        the tenant is at its limit: it stays held, to be approved once one of the tenant's jobs has ended)."""
        job = await self.get(job_id, tenant)
        k = self.keys
        outcome, detail = await self._approve(
            keys=[k.job(job_id), k.jobs_stream, k.awaiting, k.tenant(tenant), k.tenant_active(tenant),
                  k.tenant_held(tenant), *k.tenant_status_indexes(tenant)],
            args=[time.time(), self.default_max_jobs, self.default_max_tokens, int(job.params.get("job_tokens", 0))])
        if outcome == "refused":
            raise InvalidTransition(f"job {job_id} is {detail}, not awaiting approval")
        if outcome == "quota":
            raise await quota_exceeded(self, tenant, detail)
        return await self.get(job_id)

    async def expire_unapproved(self, limit: int = 32) -> list[str]:
        """Cancel the jobs held for review past their approval window (releasing their slot and token grant), each
        with an event saying why; returns their ids."""
        expired = []
        now = await self.server_time()
        for job_id in await self.redis.zrangebyscore(self.keys.awaiting, "-inf", now, start=0, num=limit):
            try:
                job = await self.get(job_id)
                await self.finish(job, CANCELLED, allowed=(AWAITING_APPROVAL,), stop_reason="approval_expired",
                                  error=f"not approved within {self.approval_window_s:g} s",
                                  event=_cancelled(job_id, "not approved in time"))
            except JobNotFound:  # deleted meanwhile
                await self.redis.zrem(self.keys.awaiting, job_id)
                continue
            except InvalidTransition:  # approved or cancelled meanwhile (that took it off the set)
                continue
            expired.append(job_id)
        return expired

    async def cancel(self, job_id: str, tenant: str) -> JobRecord:
        """A job not started yet is cancelled here; a running one is asked to stop (its worker answers within
        a second). Cancelling a cancelled job is a no-op; a finished one cannot be cancelled."""
        job = await self.get(job_id, tenant)
        if job.status in (AWAITING_APPROVAL, QUEUED):
            try:
                await self.finish(job, CANCELLED, allowed=(AWAITING_APPROVAL, QUEUED), stop_reason="cancelled",
                                  event=_cancelled(job_id, "cancelled by request"))
            except InvalidTransition:  # a worker took it meanwhile: ask that worker instead
                return await self.cancel(job_id, tenant)
        elif job.status in (RUNNING, AGGREGATING):
            await self.update(job_id, allowed=(RUNNING, AGGREGATING), control="cancel", updated=time.time())
        elif job.status != CANCELLED:
            raise InvalidTransition(f"job {job_id} is already {job.status}")
        return await self.get(job_id)

    async def delete(self, job_id: str, tenant: str) -> None:
        """Remove an ended job and everything it left (events, checkpoints, report) for good; an active one must
        be cancelled first."""
        job = await self.get(job_id, tenant)
        outcome, status = await self._delete(
            keys=[self.keys.job(job_id), self.keys.tenant_jobs(tenant), self.keys.tenant_expiring(tenant),
                  *self.keys.tenant_status_indexes(tenant), *self.keys.job_parts(job_id, job.trajectories)],
            args=[job_id, tenant, ",".join(TERMINAL)])
        # "missing" here: gone since the read above (by this very call, retried by the client after its reply was
        # lost; or by another delete or its retention), as asked: no 404 for a delete that succeeded
        if outcome == "refused":
            raise InvalidTransition(f"job {job_id} is {status}; cancel it before deleting it")

    async def claim_callback(self, job_id: str, lease_s: float) -> bool:
        """True for the one caller that may send the job's callback for the next `lease_s` seconds (the process
        that ended the job, or after that lease any sweeping worker), False for the others."""
        return bool(await self._claim_callback(keys=[self.keys.job(job_id), self.keys.callbacks],
                                               args=[job_id, lease_s, uuid.uuid4().hex]))  # the claim's id

    async def settle_callback(self, job_id: str, outcome: str) -> None:
        """The callback went (or was given up): off the set, its outcome the job's `callback_status`."""
        await self._settle_callback(keys=[self.keys.job(job_id), self.keys.callbacks], args=[job_id, outcome])

    async def due_callbacks(self, limit: int = 32) -> list[str]:
        """Ended jobs whose callback nobody holds: never tried, or their sender's lease ran out (it died)."""
        return await self.redis.zrangebyscore(self.keys.callbacks, "-inf", await self.server_time(), start=0,
                                              num=limit)

    async def server_time(self) -> float:
        """Redis's clock: the times several processes compare (callback leases, approval windows, a resumed job's
        start) must not depend on whose clock reads them."""
        seconds, microseconds = await self._server_time(keys=[self.keys.callbacks])
        return int(seconds) + int(microseconds) / 1e6

    async def finish_now(self, job_id: str, tenant: str) -> JobRecord:
        """Ask the running job to stop its trajectories and aggregate what exists."""
        await self.get(job_id, tenant)
        try:
            await self.update(job_id, allowed=(RUNNING,), control="finish", updated=time.time())
        except InvalidTransition as exc:
            raise InvalidTransition(f"{exc}; only a running job can finish now") from None
        return await self.get(job_id)

    # --- events ---

    async def append_event(self, job_id: str, event: dict[str, Any], *, owner: str = "") -> int:
        """Append one event; returns its sequence number (1, 2, ... per job, no gaps). With `owner`, only while that
        worker runs the job (else JobTakenOver)."""
        # the append's id: redis-py retries a command whose connection broke, though Redis may have run it
        written = await self._append(keys=[self.keys.job(job_id), self.keys.events(job_id), self.keys.appends(job_id)],
                                     args=[owner, time.time(), _event_json(event), uuid.uuid4().hex])
        return self._fenced(job_id, owner, written)

    def _fenced(self, job_id: str, owner: str, reply: int) -> int:
        """A fenced write's reply (scripts._HELD_BY_OWNER), its failures raised."""
        if reply == -1:
            raise JobNotFound(f"no job {job_id!r}")
        if reply == -2:
            raise JobTakenOver(f"job {job_id} is no longer run by {owner}")
        return int(reply)

    async def read_events(self, job_id: str, after: int = 0, *, count: int = READ_BATCH,
                          block_ms: int | None = None) -> list[dict[str, Any]]:
        """Events with seq > `after`, oldest first, each carrying its `seq`; waits up to `block_ms` for one."""
        key = self.keys.events(job_id)
        if block_ms is None:
            rows = await self.redis.xrange(key, min=f"(0-{after}" if after else "-", count=count)
        else:
            reply = await self.redis.xread({key: f"0-{after}"}, count=count, block=block_ms)
            rows = reply[0][1] if reply else []
        return [_event_of(fields) for _, fields in rows]

    async def read_events_of(self, afters: dict[str, int], *, count: int = READ_BATCH, block_ms: int,
                             wake: Wake | None = None) -> dict[str, list[dict[str, Any]]]:
        """Events of several jobs in one blocking read: for each job id in `afters` that has any, those with seq
        greater than its `afters` entry, oldest first (as read_events); waits up to `block_ms` for one, or (with
        `wake`) until woken, maybe with none."""
        job_of = {self.keys.events(job_id): job_id for job_id in afters}
        streams = {key: f"0-{afters[job_id]}" for key, job_id in job_of.items()}
        if wake is not None:
            streams[wake.key] = wake.seen
        batches = {}
        for key, rows in await self.redis.xread(streams, count=count, block=block_ms) or []:
            if key in job_of:
                batches[job_of[key]] = [_event_of(fields) for _, fields in rows]
            else:
                wake.seen = rows[-1][0]
        return batches

    def wake_stream(self) -> Wake:
        """A new wake stream, of this process alone."""
        return Wake(self.keys.wake(uuid.uuid4().hex))

    async def wake(self, wake: Wake) -> None:
        """End the read_events_of waiting on `wake` now (or the next one at once, when none waits)."""
        async with self.redis.pipeline(transaction=False) as pipe:  # one round trip; one slot on a cluster
            pipe.xadd(wake.key, {"wake": 1}, maxlen=1, approximate=False)
            pipe.expire(wake.key, WAKE_TTL_S)
            await pipe.execute()

    async def progress_of(self, job_ids: list[str]) -> list[tuple[str, int] | None]:
        """Each job's status and how many events it has written, None for one absent, in one round trip: two fields,
        not the whole hash (the event hub asks this of every quiet job it follows, once a second)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(self.keys.job(job_id), ["status", "events"])
            rows = await pipe.execute()
        return [(status, int(events or 0)) if status is not None else None for status, events in rows]

    # --- checkpoints and reports ---

    async def save_checkpoint(self, job_id: str, trajectory: int, data: dict[str, Any], *, owner: str = "") -> None:
        """With `owner`, only while that worker runs the job (else JobTakenOver). A change (checkpoint_log.py) is
        appended to the trajectory's log; anything else is a whole save, which replaces the checkpoint and its log."""
        write = self._append_checkpoint if is_change(data) else self._save_checkpoint
        reply = await write(keys=[self.keys.job(job_id), self.keys.checkpoint(job_id, trajectory),
                                  self.keys.checkpoint_log(job_id, trajectory)],
                            args=[owner, json.dumps(data, ensure_ascii=False)])
        self._fenced(job_id, owner, reply)

    async def load_checkpoints(self, job_id: str, trajectories: int) -> dict[int, dict[str, Any]]:
        values = await self.redis.mget([*(self.keys.checkpoint(job_id, k) for k in range(trajectories)),
                                        *(self.keys.checkpoint_log(job_id, k) for k in range(trajectories))])
        wholes, logs = values[:trajectories], values[trajectories:]
        return {k: folded(whole, log) for k, (whole, log) in enumerate(zip(wholes, logs, strict=True)) if whole}

    async def get_report(self, job_id: str) -> tuple[str, dict[str, Any]] | None:
        data = await self.redis.hgetall(self.keys.report(job_id))
        if not data:
            return None
        return data["markdown"], json.loads(data["json"])
