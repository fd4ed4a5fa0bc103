"""A job refused at one of its tenant's limits (heavy/store/jobs.py's submit and approve), as the QuotaExceeded the
API answers 429 with: what the limit is, and when the tenant may try again (Retry-After)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from heavy.store.errors import QuotaExceeded

if TYPE_CHECKING:
    from heavy.store.jobs import JobStore

# When a refused tenant may try again. A slot, or tokens reserved for a running job, free when one of its jobs
# ends, which nobody can tell beforehand: a short wait, not a hammering. Tokens spent with none reserved, and jobs
# held for review with no approval window, free only when someone acts (an operator raises the limit, a reviewer
# approves or cancels). A held job expires on its own at its approve_by, which a worker's sweep (every few seconds)
# acts on.
SLOT_RETRY_S = 15.0
UNTIL_ACTED_ON_S = 3600.0
EXPIRY_SWEEP_S = 5.0


async def quota_exceeded(jobs: JobStore, tenant: str, limit: str) -> QuotaExceeded:
    """The refusal of a job at the tenant's `limit` (jobs, tokens or held), with when to try again."""
    if limit == "held":
        return QuotaExceeded(limit, f"tenant {tenant!r} is at its limit of {jobs.max_held_jobs} jobs held for "
                                    "review: approve or cancel one of them first", await _held_retry_s(jobs, tenant))
    if limit == "jobs":
        return QuotaExceeded(limit, f"tenant {tenant!r} is at its limit of concurrent jobs", SLOT_RETRY_S)
    reserved = int(await jobs.redis.hget(jobs.keys.tenant(tenant), "tokens_reserved") or 0)
    return QuotaExceeded(limit, f"tenant {tenant!r} is at its limit of tokens",
                         SLOT_RETRY_S if reserved else UNTIL_ACTED_ON_S)


async def _held_retry_s(jobs: JobStore, tenant: str) -> float:
    """Seconds until the first of the tenant's held jobs expires unapproved (frees a place), else the bound."""
    held = list(await jobs.redis.smembers(jobs.keys.tenant_held(tenant)))
    expiries = [score for score in await jobs.redis.zmscore(jobs.keys.awaiting, held) if score] if held else []
    if not expiries:  # no approval window: they wait for their reviewer
        return UNTIL_ACTED_ON_S
    return max(1.0, math.ceil(min(expiries) - await jobs.server_time() + EXPIRY_SWEEP_S))
