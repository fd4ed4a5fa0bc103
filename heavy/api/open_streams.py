"""This API process's open event streams and their leases on the tenants' counts in Redis (heavy/store/streams.py):
a tenant may have `tenant_max_streams` open across all API processes, or as many as its own cap says (`heavy keys
create --max-streams`). A lease is taken as a stream opens (past the cap: a 429), renewed while the stream is open,
and dropped as it ends, however it ends; a process that dies leaves leases that lapse within LEASE_S."""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from contextvars import Context

from heavy.store import QuotaExceeded, StreamLeases
from heavy.store.streams import RENEW_S

log = logging.getLogger(__name__)


class OpenStreams:
    def __init__(self, leases: StreamLeases, cap: int) -> None:
        self.leases, self.cap = leases, cap
        self._open: dict[str, str] = {}  # stream (its lease's member) -> tenant
        self._names = (f"{uuid.uuid4().hex}:{n}" for n in itertools.count())  # unique across processes
        self._renewal: asyncio.Task | None = None
        self._releases: set[asyncio.Task] = set()

    async def open(self, tenant: str) -> str:
        """A lease on a new stream of the tenant's, named by what this returns; QuotaExceeded at its cap."""
        stream = next(self._names)
        if (refused := await self.leases.acquire(tenant, stream, self.cap)) is not None:
            wait_s, cap = refused
            raise QuotaExceeded("streams", f"tenant {tenant!r} is at its limit of {cap} open event streams: "
                                           "close one first", wait_s)
        self._open[stream] = tenant
        if self._renewal is None:
            # every tenant's: not in the context of this request (whose log lines name its tenant)
            self._renewal = asyncio.create_task(self._renew(), name="stream lease renewal", context=Context())
        return stream

    def close(self, stream: str) -> None:
        """Drop the stream's lease (not awaited: a stream whose client left is being cancelled, and an await there
        would be cancelled too; should Redis not take it, the lease lapses within LEASE_S)."""
        tenant = self._open.pop(stream, None)
        if tenant is not None:
            release = asyncio.create_task(self._release(tenant, stream))
            self._releases.add(release)
            release.add_done_callback(self._releases.discard)

    async def _release(self, tenant: str, stream: str) -> None:
        try:
            await self.leases.release(tenant, stream)
        except Exception as exc:
            log.warning("an event stream's lease was not dropped (it lapses by itself): %s", exc)

    async def _renew(self) -> None:
        try:
            while self._open:
                await asyncio.sleep(RENEW_S)
                by_tenant: dict[str, list[str]] = {}
                for stream, tenant in self._open.items():
                    by_tenant.setdefault(tenant, []).append(stream)
                try:
                    await self.leases.renew(by_tenant)
                except Exception as exc:  # Redis away for a moment: the next renewal is RENEW_S later
                    log.warning("renewing the open event streams' leases failed: %s", exc)
        finally:
            self._renewal = None  # in the step the loop saw no stream open: the next one opened starts another
