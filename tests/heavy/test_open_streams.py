"""An API process's open event streams' leases on real Redis: renewed while a stream is open (so a stream open
longer than a lease still counts), dropped when it ends."""

import pytest

from heavy.api import open_streams
from heavy.api.open_streams import OpenStreams
from heavy.store import QuotaExceeded
from tests.heavy.worker_helpers import wait_for

pytestmark = pytest.mark.anyio


async def test_an_open_streams_lease_is_renewed_until_it_ends(store, monkeypatch):
    monkeypatch.setattr(open_streams, "RENEW_S", 0.05)  # renewals in quick succession, not every 10 s
    streams = OpenStreams(store.streams, cap=1)
    key = store.jobs.keys.tenant_streams("acme")
    stream = await streams.open("acme")
    first_lapse = await store.redis.zscore(key, stream)

    async def renewed() -> bool:
        return await store.redis.zscore(key, stream) > first_lapse
    await wait_for(renewed)
    with pytest.raises(QuotaExceeded) as refused:
        await streams.open("acme")
    assert refused.value.limit == "streams" and 1 <= refused.value.retry_after_s <= 30

    streams.close(stream)

    async def dropped() -> bool:
        return await store.redis.zcard(key) == 0 and streams._renewal is None
    await wait_for(dropped)
    streams.close(await streams.open("acme"))  # its place was free
    await wait_for(dropped)
