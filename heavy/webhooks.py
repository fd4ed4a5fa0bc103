"""A job's callback: when a job that named a `callback_url` ends (done, partial, failed or cancelled), the process that
ended it POSTs the job's public state there, so a client need not poll or hold an event stream open.

The POST goes through the same SSRF guard as `open_page` (resolved first, private and metadata addresses refused,
the connection made to a checked address, the host's next when the first refuses it or has not taken it within
CONNECT_SHARE of the attempt, no redirects followed), unless the address is on HEAVY_WEBHOOK_ALLOW. With a
`callback_secret` the body is signed: `X-Heavy-Signature: sha256=<HMAC-SHA256 of the body>`, and for receivers that
refuse replays also with the attempt's time, `X-Heavy-Timestamp: <unix seconds>` and `X-Heavy-Signature-Timestamped:
sha256=<HMAC-SHA256 of "<timestamp>.<body>">` (docs/webhooks.md). Up to `webhook_attempts` tries with backoff (or
the receiver's Retry-After, up to 8 s) on connection errors, 408, 429 and 5xx; the outcome is kept in the job as
`callback_status` ("pending", then "sending" while it is out).

Delivery is at least once. Ending the job puts it on a Redis set of due callbacks in the same atomic step; the
process that ended it (a worker, or the API for a queued job it cancelled) claims it for a lease longer than all its
tries take and settles it when done. Workers sweep the set (heavy/worker/callbacks.py): a callback whose sender died
(lease run out) is sent again by whichever worker claims it first. A receiver can therefore see a job twice; the job
id tells them apart.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time

import httpx

from heavy.config import Settings
from heavy.logs import log_about
from heavy.retry_after import retry_after_seconds
from heavy.store import JobNotFound, JobStore
from heavy.store.connection import REDIS_FAILURES
from heavy.store.records import JobRecord
from heavy.tools.base import ToolError
from heavy.tools.ssrf import AllowedTarget, SsrfGuard, send_pinned

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Heavy-Signature"  # of the body alone: kept for receivers that verify only that
TIMESTAMP_HEADER = "X-Heavy-Timestamp"
TIMESTAMPED_SIGNATURE_HEADER = "X-Heavy-Signature-Timestamped"  # of "<timestamp>.<body>": a replay is seen as old
EVENT = "job.ended"
RETRIED_STATUSES = frozenset({408, 429})  # and every 5xx
# Of an attempt's time, what one address's connection (TLS included) may take: a first address that drops packets
# (no refusal comes) leaves the host's next checked ones time to connect and take the POST within the same attempt
CONNECT_SHARE = 0.25


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signed_headers(secret: str, body: bytes, now: float) -> dict[str, str]:
    """Both signatures of a POST sent at `now` (each attempt is signed anew: its timestamp is when it leaves)."""
    timestamp = str(int(now))
    return {SIGNATURE_HEADER: signature(secret, body), TIMESTAMP_HEADER: timestamp,
            TIMESTAMPED_SIGNATURE_HEADER: signature(secret, timestamp.encode() + b"." + body)}


def webhook_guard(settings: Settings) -> SsrfGuard:
    """Public addresses, and the "ip:port" entries of HEAVY_WEBHOOK_ALLOW (a receiver on a private network)."""
    allowed = []
    for entry in settings.webhook_allow:
        address, _, port = entry.rpartition(":")
        allowed.append(AllowedTarget(address.strip("[]"), int(port)))
    return SsrfGuard(allow=allowed)


def payload(job: JobRecord, root_path: str = "") -> bytes:
    return json.dumps({"type": EVENT, "job": job.public(), "links": job.links(root_path)},
                      ensure_ascii=False).encode()


def delivery_lease_s(settings: Settings) -> float:
    """How long a claimed callback is its sender's: twice what all its tries and pauses can take (each try, the
    address check included, is cut at `webhook_timeout_s`; a pause, at MAX_PAUSE_S)."""
    return 2 * (settings.webhook_attempts * settings.webhook_timeout_s + (settings.webhook_attempts - 1) * MAX_PAUSE_S)


MAX_PAUSE_S = 8.0


def _pause_s(attempt: int, retry_after_s: float | None = None) -> float:
    """Before try `attempt` (from 1): backoff, or the receiver's Retry-After when longer, up to MAX_PAUSE_S."""
    return min(max(0.5 * 2 ** attempt, retry_after_s or 0.0), MAX_PAUSE_S)


async def deliver(jobs: JobStore, job_id: str, settings: Settings, guard: SsrfGuard | None = None) -> str | None:
    """POST the ended job to its callback URL if its callback is due and this caller claims it; the outcome (also
    kept as `callback_status`), or None. Never raises: a receiver's failure is the job's callback status, not the
    caller's error, and Redis down leaves the callback due, for a sweep to send (again, if this call had sent it)."""
    outcome = None
    log_about(job_id=job_id)  # a sweep's delivery starts in no job's context: its lines name the job by field too
    try:
        if not await jobs.claim_callback(job_id, delivery_lease_s(settings)):
            return None
        try:
            job = await jobs.get(job_id)
        except JobNotFound:  # deleted meanwhile
            await jobs.settle_callback(job_id, "not sent: the job was deleted")
            return None
        log_about(job_id=job.id, tenant=job.tenant)
        outcome = await _post(job, settings, guard or webhook_guard(settings))
        log.info("job %s: callback %s", job.id, _logged(outcome, job.callback_url))
        await jobs.settle_callback(job.id, outcome)
    except REDIS_FAILURES as exc:
        log.warning("job %s: callback %s (Redis: %s: %s); a sweep sends it once its claim runs out", job_id,
                    "sent but not recorded" if outcome else "not sent", type(exc).__name__, exc)
    return outcome


def _logged(outcome: str, url: str) -> str:
    """The outcome as the log shows it: the callback URL (a refusal names it), whose path or query may hold its
    receiver's token, cut to its origin. The job's callback_status, its tenant's to read, keeps it whole."""
    parsed = httpx.URL(url)
    origin = f"{parsed.scheme}://{parsed.netloc.decode('ascii')}/..."
    for spelling in (url, str(parsed)):
        outcome = outcome.replace(spelling, origin)
    return outcome


async def _post(job: JobRecord, settings: Settings, guard: SsrfGuard) -> str:
    body = payload(job, settings.api_root_path)
    headers = {"Content-Type": "application/json", "X-Heavy-Event": EVENT, "User-Agent": "heavy-webhook/1"}
    outcome = "not sent"
    timeout = httpx.Timeout(settings.webhook_timeout_s, connect=CONNECT_SHARE * settings.webhook_timeout_s)
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=timeout) as client:
        retry_after_s = None  # the last answer's Retry-After (a 429 or 503 names when to come back)
        for attempt in range(settings.webhook_attempts):
            if attempt:
                await asyncio.sleep(_pause_s(attempt, retry_after_s))
            try:  # httpx's timeout bounds each read and write: a receiver trickling its answer a byte at a time
                async with asyncio.timeout(settings.webhook_timeout_s):  # would outlast the lease without this one
                    signed = signed_headers(job.callback_secret, body, time.time()) if job.callback_secret else {}
                    response = await _send(client, guard, job.callback_url, body, {**headers, **signed})
            except ToolError as exc:  # refused (a private address, a scheme) or unresolvable: final
                return f"not sent: {exc}"
            except httpx.HTTPError as exc:
                outcome = f"failed after {attempt + 1} attempt(s): {type(exc).__name__}: {exc}"
                continue
            except TimeoutError:
                outcome = (f"failed after {attempt + 1} attempt(s): "
                           f"the attempt took longer than {settings.webhook_timeout_s:g} s")
                continue
            outcome = f"HTTP {response.status_code} after {attempt + 1} attempt(s)"
            retry_after_s = retry_after_seconds(response.headers.get("retry-after"))
            if response.is_success:
                return f"delivered: {outcome}"
            if response.status_code < 500 and response.status_code not in RETRIED_STATUSES:
                return f"rejected: {outcome}"
    return f"undelivered: {outcome}"


async def _send(client: httpx.AsyncClient, guard: SsrfGuard, url: str, body: bytes,
                headers: dict[str, str]) -> httpx.Response:
    """One attempt: the address checked (ToolError when refused), then the POST to the first of the host's checked
    addresses that takes the connection."""
    target = await guard.check(url)
    response = await send_pinned(client, target, "POST", headers, content=body)
    await response.aclose()  # its body is never read: a receiver's size cannot matter
    return response
