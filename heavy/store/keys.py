"""Redis key names (design.md "Redis keys"), all under one prefix.

A job's keys share the `{job id}` hash tag, so a Redis Cluster keeps one job on one shard.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

GROUP = "workers"


@dataclass(frozen=True)
class Keys:
    prefix: str = "heavy:"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}job:{{{job_id}}}"

    def events(self, job_id: str) -> str:
        return f"{self.job(job_id)}:events"

    def checkpoint(self, job_id: str, trajectory: int) -> str:
        return f"{self.job(job_id)}:traj:{trajectory}"

    def report(self, job_id: str) -> str:
        return f"{self.job(job_id)}:report"

    def job_parts(self, job_id: str, trajectories: int) -> list[str]:
        """Every key of a job but its hash: events, report, one checkpoint per trajectory."""
        return [self.events(job_id), self.report(job_id), *(self.checkpoint(job_id, k) for k in range(trajectories))]

    @property
    def jobs_stream(self) -> str:
        return f"{self.prefix}jobs"

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

    def tenant_active(self, tenant: str) -> str:
        """Set of the tenant's queued, waiting and running jobs: the concurrency quota counts it."""
        return f"{self.tenant(tenant)}:active"

    def tenant_keys(self, tenant: str) -> str:
        return f"{self.tenant(tenant)}:keys"

    @property
    def tenants(self) -> str:
        return f"{self.prefix}tenants"

    def apikey(self, digest: str) -> str:
        return f"{self.prefix}apikey:{digest}"

    def page(self, url: str) -> str:
        """An opened page, shared by all workers; the URL is hashed so a 2 KB URL makes a short key."""
        return f"{self.prefix}page:{hashlib.sha256(url.encode()).hexdigest()}"
