"""heavy on a Redis Cluster (`redis+cluster://`): the URL, the store's keys in one slot, Redis's clock read where the
store's scripts read it, and a worker running a job end to end, on a real cluster of three redis-server processes
(tests/heavy/redis_cluster.py). The store's own tests run on it too (test_store.py)."""

import asyncio
import itertools

import pytest
from redis.crc import key_slot

from heavy.store import JobStore, Keys
from heavy.store.connection import ClusterTarget, parse_cluster_url
from heavy.worker import Worker
from tests.heavy.api_helpers import app_for, client_for, parse_sse
from tests.heavy.fakes import ScriptedBackend
from tests.heavy.worker_helpers import JOB, WORKER_SETTINGS, assert_gap_free, ended, executor, researcher, wait_for

pytestmark = pytest.mark.anyio


@pytest.fixture
def redis_url(redis_cluster) -> str:
    return redis_cluster.url  # conftest's `store` is over this


def test_cluster_urls_name_some_nodes_the_credentials_and_tls():
    assert parse_cluster_url("redis+cluster://:s3cret@a:7000,b,10.0.0.3:7002") == \
        ClusterTarget((("a", 7000), ("b", 6379), ("10.0.0.3", 7002)), None, "s3cret")
    assert parse_cluster_url("rediss+cluster://heavy:pw%40x@[::1]:7000") == \
        ClusterTarget((("::1", 7000),), "heavy", "pw@x", tls=True)
    for bad in ("redis+cluster://", "redis+cluster://a:port", "redis+cluster://a:7000/1", "redis://a:7000",
                "redis+cluster://a?ssl=true"):
        with pytest.raises(ValueError, match="cluster|address"):
            parse_cluster_url(bad)


def test_on_a_cluster_every_key_of_the_store_is_in_one_slot_and_elsewhere_names_are_unchanged():
    """Redis hashes a key by its first `{...}`: the prefix's, before the job id's and any in a tenant's key."""
    plain, tagged = Keys(), Keys().on_one_slot()
    assert (plain.job("j1"), tagged.job("j1")) == ("heavy:job:{j1}", "heavy:{heavy}:job:{j1}")
    assert tagged.on_one_slot() == tagged and Keys("t:{x}:").on_one_slot() == Keys("t:{x}:")
    names = [tagged.job("j1"), tagged.job("j2"), *tagged.job_parts("j1", 8), tagged.jobs_stream, tagged.callbacks,
             tagged.awaiting, tagged.idempotency("acme", "{key}"), tagged.tenant("acme"), tagged.tenant_jobs("acme"),
             tagged.tenant_active("acme"), tagged.tenant_keys("acme"), tagged.tenants, tagged.apikey("ab12")]
    assert {key_slot(name.encode()) for name in names} == {key_slot(b"heavy")}


async def test_the_store_reads_the_clock_of_the_shard_its_scripts_run_on(store, redis_cluster):
    """Approval windows and callback leases are set by scripts on Redis's clock and compared with `server_time`:
    on a cluster both must be the clock of the shard that holds the store's keys. A plain TIME goes to the client's
    default node, here made another one by taking keys whose slot it does not hold."""
    default = store.redis.get_default_node()
    keys = next(keys for keys in (Keys(f"t{n}:").on_one_slot() for n in itertools.count())
                if store.redis.get_node_from_key(keys.callbacks) != default)
    holder = store.redis.get_node_from_key(keys.callbacks).port
    others = [redis_cluster.node(n) for n, (port, _) in enumerate(redis_cluster.ports) if port != holder]
    for node in others:
        node.config_resetstat()
    await JobStore(store.redis, keys).server_time()
    assert [node.info("commandstats").get("cmdstat_time") for node in others] == [None, None]
    for node in others:
        node.close()


async def test_a_worker_runs_a_job_to_its_report_on_a_cluster(store):
    key = await store.tenants.create_key("acme")
    stop = asyncio.Event()
    worker = asyncio.create_task(Worker(store, ScriptedBackend(researcher), executor(), WORKER_SETTINGS,
                                        name="w1").run(stop))
    try:
        async with client_for(app_for(store, WORKER_SETTINGS), key.secret) as client:
            job = (await client.post("/v1/jobs", json=JOB)).json()
            done = await wait_for(lambda: ended(store, job["id"]))
            assert done.status == "done" and done.stop_reason == "all_done"
            events = [e["data"] for e in parse_sse((await client.get(f"/v1/jobs/{job['id']}/events")).text)]
            assert_gap_free(events, trajectories=3)
            assert events[-1]["type"] == "report_ready"
            report = (await client.get(f"/v1/jobs/{job['id']}/report")).json()
            assert report["answer"] and len(report["trajectories"]) == 3
            assert (await store.tenants.get("acme")).tokens_used == done.tokens > 0
            assert (await store.queue.pending(), await store.queue.depth()) == (0, 0)
    finally:
        stop.set()
        await worker
