"""Redis key names (design.md "Redis keys"), all under one prefix.

On one server (or under Sentinel) the prefix is `heavy:`. On a Redis Cluster it carries a hash tag of its own,
`heavy:{heavy}:` (`Keys.on_one_slot`): Redis hashes a key by its FIRST `{...}`, so every key of the store, the
`{job id}`-tagged ones too, is in one slot, and the scripts that change a job together with its tenant, the `jobs`
stream and the callbacks and awaiting sets are single-slot, atomic steps as on one server. (The `{job id}` in a
job's names decides no slot then; it stays so that a deployment's existing keys keep their names.) The page cache
keeps the plain prefix: its keys are read and written one at a time, and spread over the cluster's shards.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from heavy.store.records import STATUSES

GROUP = "workers"


@dataclass(frozen=True)
class Keys:
    prefix: str = "heavy:"

    def on_one_slot(self) -> Keys:
        """These names with the prefix's own hash tag (`t:` -> `t:{t}:`); the same when it already has one."""
        opening = self.prefix.find("{")
        if opening < 0:
            return Keys(f"{self.prefix}{{{self.prefix.strip(':') or 'heavy'}}}:")
        if self.prefix.find("}", opening) > opening + 1:
            return self
        raise ValueError(f"key prefix {self.prefix!r} opens a hash tag it does not close: its keys would not share "
                         "a slot")

    def job(self, job_id: str) -> str:
        return f"{self.prefix}job:{{{job_id}}}"

    def events(self, job_id: str) -> str:
        return f"{self.job(job_id)}:events"

    def checkpoint(self, job_id: str, trajectory: int) -> str:
        """A trajectory's whole save, one line of JSON (heavy/store/checkpoint_log.py)."""
        return f"{self.job(job_id)}:traj:{trajectory}"

    def checkpoint_log(self, job_id: str, trajectory: int) -> str:
        """What the trajectory's saves after its whole save changed, a line each (heavy/store/checkpoint_log.py)."""
        return f"{self.checkpoint(job_id, trajectory)}:log"

    def report(self, job_id: str) -> str:
        return f"{self.job(job_id)}:report"

    def appends(self, job_id: str) -> str:
        """Hash append id -> seq: the job's events appended, so a retried append is not written twice (gone within
        scripts.APPEND_IDS_TTL_MS of the last append)."""
        return f"{self.job(job_id)}:appends"

    def job_parts(self, job_id: str, trajectories: int) -> list[str]:
        """Every key of a job but its hash: events, report, each trajectory's checkpoint and its log, appends."""
        return [self.events(job_id), self.report(job_id), *(self.checkpoint(job_id, k) for k in range(trajectories)),
                *(self.checkpoint_log(job_id, k) for k in range(trajectories)), self.appends(job_id)]

    @property
    def jobs_stream(self) -> str:
        return f"{self.prefix}jobs"

    @property
    def workers_seen(self) -> str:
        """Hash: when a worker last reached the queue, polling it or renewing its leases (`seen`, ms on Redis's
        clock), and the last gap in which none did (`gap_start`, `gap_end`): an outage that cut every worker off
        (scripts.CLAIM_ABANDONED)."""
        return f"{self.prefix}workers:seen"

    @property
    def callbacks(self) -> str:
        """Sorted set job id -> when its callback may be tried (next): ended jobs whose callback is not settled."""
        return f"{self.prefix}callbacks"

    @property
    def awaiting(self) -> str:
        """Sorted set job id -> when it expires: jobs held for review (awaiting approval) that expire unapproved."""
        return f"{self.prefix}awaiting"

    def idempotency(self, tenant: str, key: str) -> str:
        return f"{self.prefix}idem:{tenant}:{key}"

    def tenant(self, tenant: str) -> str:
        return f"{self.prefix}tenant:{tenant}"

    def tenant_jobs(self, tenant: str) -> str:
        """Sorted set job id -> created time: the tenant's job list."""
        return f"{self.tenant(tenant)}:jobs"

    def tenant_status_jobs(self, tenant: str, status: str) -> str:
        """Sorted set job id -> created time: the tenant's jobs in `status` (a filtered list reads these)."""
        return f"{self.tenant_jobs(tenant)}:{status}"

    def tenant_status_indexes(self, tenant: str) -> list[str]:
        """The tenant's status sets, in STATUSES order (the scripts find a status's set by that order)."""
        return [self.tenant_status_jobs(tenant, status) for status in STATUSES]

    def tenant_expiring(self, tenant: str) -> str:
        """Sorted set job id -> when its keys expire: the tenant's ended jobs under a retention, which leave the
        list and the status sets once due (Redis expires a job's keys, not its entries in them)."""
        return f"{self.tenant_jobs(tenant)}:expiring"

    def tenant_checked(self, tenant: str) -> str:
        """Since when (a created time) the tenant's jobs were last checked to be on their status sets."""
        return f"{self.tenant_jobs(tenant)}:checked"

    def tenant_active(self, tenant: str) -> str:
        """Set of the tenant's queued, waiting and running jobs: the concurrency quota counts it."""
        return f"{self.tenant(tenant)}:active"

    def tenant_held(self, tenant: str) -> str:
        """Set of the tenant's jobs held for review (awaiting approval): the held-jobs cap counts it."""
        return f"{self.tenant(tenant)}:held"

    def tenant_streams(self, tenant: str) -> str:
        """Sorted set stream -> when its lease lapses: the tenant's open event streams (heavy/store/streams.py)."""
        return f"{self.tenant(tenant)}:streams"

    def tenant_keys(self, tenant: str) -> str:
        return f"{self.tenant(tenant)}:keys"

    @property
    def tenants(self) -> str:
        return f"{self.prefix}tenants"

    def apikey(self, digest: str) -> str:
        return f"{self.prefix}apikey:{digest}"

    def wake(self, name: str) -> str:
        """A stream of one process's own that its blocking read of job events names too, to be ended early by it
        (JobStore.wake)."""
        return f"{self.prefix}wake:{name}"

    @property
    def pages(self) -> str:
        """What the page cache's keys begin with."""
        return f"{self.prefix}page:"

    def page(self, url: str) -> str:
        """An opened page, shared by all workers; the URL is hashed so a 2 KB URL makes a short key."""
        return f"{self.pages}{hashlib.sha256(url.encode()).hexdigest()}"
