"""An API process's open event streams' leases on real Redis, one server and a Redis Cluster: renewed while a stream
is open (so a stream open longer than a lease still counts), all of a process's tenants' leases in one step, and
dropped when it ends."""

import pytest

from heavy.api import open_streams
from heavy.api.open_streams import OpenStreams
from heavy.store import QuotaExceeded
from tests.heavy.worker_helpers import wait_for

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["server", "cluster"])
def redis_url(request) -> str:
    """`store` (conftest's) over one redis-server, then over a Redis Cluster (its keys in one slot)."""
    return request.getfixturevalue("redis_server" if request.param == "server" else "redis_cluster").url


async def test_an_open_streams_lease_is_renewed_until_it_ends(store, monkeypatch):
    monkeypatch.setattr(open_streams, "RENEW_S", 0.05)  # renewals in quick succession, not every 10 s
    streams = OpenStreams(store.streams, cap=1)
    key, rivals = store.jobs.keys.tenant_streams("acme"), store.jobs.keys.tenant_streams("globex")
    stream, rival = await streams.open("acme"), await streams.open("globex")
    first_lapses = await store.redis.zscore(key, stream), await store.redis.zscore(rivals, rival)

    async def renewed() -> bool:  # both tenants' in one script: on a cluster, its keys must share a slot
        lapses = await store.redis.zscore(key, stream), await store.redis.zscore(rivals, rival)
        return all(later > first for later, first in zip(lapses, first_lapses, strict=True))
    await wait_for(renewed)
    with pytest.raises(QuotaExceeded) as refused:
        await streams.open("acme")
    assert refused.value.limit == "streams" and 1 <= refused.value.retry_after_s <= 30

    streams.close(stream)
    streams.close(rival)

    async def dropped() -> bool:
        return await store.redis.zcard(key) == await store.redis.zcard(rivals) == 0 and streams._renewal is None
    await wait_for(dropped)
    streams.close(await streams.open("acme"))  # its place was free
    await wait_for(dropped)


async def test_a_tenants_own_stream_cap_wins_over_the_deployments(store, monkeypatch):
    """Set on the tenant as its job and token limits are (`heavy keys create --max-streams`), on every API process."""
    monkeypatch.setattr(open_streams, "RENEW_S", 0.05)
    await store.tenants.set_limits("acme", max_streams=2)
    streams = OpenStreams(store.streams, cap=1)
    opened = [await streams.open("acme"), await streams.open("acme")]
    with pytest.raises(QuotaExceeded, match="limit of 2 open event streams"):
        await streams.open("acme")
    opened.append(await streams.open("globex"))  # another tenant: the deployment's cap
    with pytest.raises(QuotaExceeded, match="limit of 1 open event streams"):
        await streams.open("globex")
    for stream in opened:
        streams.close(stream)
    await wait_for(lambda: _none_open(streams))


async def _none_open(streams: OpenStreams) -> bool:
    return streams._renewal is None
