"""heavy on a Redis Cluster (`redis+cluster://`) of redis-server processes on loopback (tests/heavy/redis_cluster.py):
the URL, the store's keys in one slot, Redis's clock read where the store's scripts read it, a worker running a job
end to end, the shared page cache, a callback's sender when no node answers, and a failover of the shard that holds
the store. The store's own tests run on a cluster too (test_store.py)."""

import asyncio
import itertools
import json

import pytest
from redis.crc import key_slot

from heavy.api import event_hub
from heavy.api.event_hub import EventHub
from heavy.config import Settings
from heavy.embedded_redis import find_redis_server
from heavy.store import JobStore, Keys, QuotaExceeded, Store
from heavy.store.connection import ClusterTarget, parse_cluster_url
from heavy.tools.page_cache import Page
from heavy.tools.redis_page_cache import RedisPageCache
from heavy.webhooks import deliver
from heavy.worker import Worker
from tests.heavy.api_helpers import app_for, client_for, parse_sse
from tests.heavy.fakes import ScriptedBackend
from tests.heavy.redis_cluster import LocalCluster
from tests.heavy.worker_helpers import JOB, WORKER_SETTINGS, assert_gap_free, ended, executor, researcher, wait_for

pytestmark = pytest.mark.anyio
FAILOVER_S = 30


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
    assert Keys("").on_one_slot() == Keys("{heavy}:")
    with pytest.raises(ValueError, match="hash tag"):
        Keys("t:{}:").on_one_slot()  # `{}` is no tag: Redis would hash each whole key
    names = [tagged.job("j1"), tagged.job("j2"), *tagged.job_parts("j1", 8), tagged.jobs_stream, tagged.callbacks,
             tagged.awaiting, tagged.idempotency("acme", "{key}"), tagged.tenant("acme"), tagged.tenant_jobs("acme"),
             tagged.tenant_active("acme"), tagged.tenant_held("acme"), tagged.tenant_keys("acme"), tagged.tenants,
             tagged.apikey("ab12"), *tagged.tenant_status_indexes("acme"), tagged.tenant_expiring("acme"),
             tagged.tenant_checked("acme"), tagged.wake("0a1b")]
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


async def test_a_tenants_cap_on_jobs_held_for_review_holds_on_a_cluster(store):
    """SUBMIT, APPROVE and FINISH keep the tenant's held set in their one-slot step."""
    store.jobs.max_held_jobs = 1

    async def hold():
        job, _ = await store.jobs.submit("acme", question="q", mode="report", params={"trajectories": 1}, review=True)
        return job

    held = await hold()
    with pytest.raises(QuotaExceeded):
        await hold()
    await store.jobs.approve(held.id, "acme")
    await store.jobs.cancel((await hold()).id, "acme")
    await hold()


async def test_the_event_hub_reads_the_streams_of_several_followed_jobs_in_one_read_on_a_cluster(store, monkeypatch):
    # one XREAD over several jobs' streams: legal on a cluster only while the store's keys share one slot
    monkeypatch.setattr(event_hub, "BLOCK_MS", 50)
    key = (await store.tenants.create_key("acme")).secret
    job_ids = [(await store.jobs.submit("acme", question="q", mode="report", params={"trajectories": 1}))[0].id
               for _ in range(2)]
    hub = EventHub(store)
    seen: dict[str, list[str]] = {job_id: [] for job_id in job_ids}

    async def follow(job_id: str) -> None:
        async for event in hub.follow(job_id, 0, key):
            seen[job_id].append(event["type"])
    followers = [asyncio.create_task(follow(job_id)) for job_id in job_ids]
    await wait_for(lambda: asyncio.sleep(0, result=len(hub._readers) == 2))
    for job_id in job_ids:
        await store.jobs.update(job_id, status="running")
        await store.jobs.append_event(job_id, {"type": "job_started", "job_id": job_id})
        await store.jobs.finish(await store.jobs.get(job_id), "done", event={"type": "report_ready"})
    await asyncio.wait_for(asyncio.gather(*followers), 10)
    assert seen == {job_id: ["job_started", "report_ready"] for job_id in job_ids}


async def test_a_worker_runs_a_job_to_its_report_on_a_cluster(store):
    key = await store.tenants.create_key("acme")
    stop = asyncio.Event()
    worker = asyncio.create_task(Worker(store, ScriptedBackend(researcher), executor(), WORKER_SETTINGS,
                                        name="w1").run(stop))
    try:
        async with client_for(app_for(store, WORKER_SETTINGS), key.secret) as client:
            assert (await client.get("/readyz")).status_code == 200  # its Redis check answers through the cluster
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


async def test_workers_share_opened_pages_through_a_cluster(redis_url, key_prefix):
    """The page cache's keys are single: they keep the plain prefix and spread over the cluster's shards."""
    caches = [RedisPageCache.connect(redis_url, ttl_s=60, max_bytes=1000, keys=Keys(key_prefix)) for _ in range(2)]
    page = Page(url="https://example.org/hekla", final_url="https://example.org/hekla", title="Hekla",
                text="Hekla is a stratovolcano.", fetched_at=1.5, content_hash="h", truncated=False)
    try:
        await caches[0].put(page)
        assert await caches[1].get(page.url) == page
    finally:
        for cache in caches:
            await cache.aclose()


@pytest.fixture
def failing_cluster(redis_cluster, tmp_path):
    """A cluster of its own, as the test kills one of its nodes, quick to notice a dead node (after 1 s); after
    `redis_cluster`, which skips the test without a redis-server."""
    cluster = LocalCluster(find_redis_server(), tmp_path, node_timeout_ms=1000).form()
    yield cluster
    cluster.stop()


async def test_the_store_goes_on_on_the_promoted_replica_after_its_shards_primary_dies(failing_cluster, key_prefix):
    """All of the store's keys are on one shard: its primary dies, the cluster promotes that shard's replica, and
    the store reads what it wrote and writes on."""
    store = Store.connect(failing_cluster.url, Settings(), Keys(key_prefix))
    try:
        await store.queue.ensure_group()
        primary = store.redis.get_node_from_key(store.jobs.keys.jobs_stream)
        replica = failing_cluster.add_replica(primary.port)
        key = await store.tenants.create_key("acme")
        job, _ = await store.jobs.submit("acme", question="q", mode="report", params={"trajectories": 1})
        await store.jobs.append_event(job.id, {"type": "job_started"})
        assert await store.redis.execute_command("WAIT", 1, 10_000, target_nodes=primary) == 1  # all on the replica

        failing_cluster.kill(primary.port)
        await wait_for(lambda: asyncio.to_thread(failing_cluster.is_primary, replica), FAILOVER_S, interval_s=0.2)

        assert (await store.jobs.get(job.id, "acme")).question == "q"  # read from the promoted replica
        assert await store.tenants.resolve(key.secret) == "acme"
        assert [e["type"] for e in await store.jobs.read_events(job.id)] == ["job_started"]
        again, _ = await store.jobs.submit("acme", question="q2", mode="report", params={"trajectories": 1})
        page, total = await store.jobs.list("acme")
        assert total == 2 and [j.id for j in page] == [again.id, job.id]  # and writes go there too
        assert [c.job_id for c in await store.queue.claim_new("w1", count=2, block_ms=10)] == [job.id, again.id]
    finally:
        await store.aclose()


async def test_a_callback_sent_while_no_node_of_the_cluster_answers_does_not_raise(failing_cluster, key_prefix,
                                                                                     json_lines):
    """The cluster client raises RedisClusterException (not a RedisError) once it finds no node to ask: the worker's
    delivery task (heavy/worker/callbacks.py) raised it where nothing awaits it, an asyncio 'exception never
    retrieved' instead of the warning naming the job, by field too (a sweep's delivery has no job's context)."""
    settings = Settings(webhook_attempts=1, webhook_timeout_s=1)
    store = Store.connect(failing_cluster.url, settings, Keys(key_prefix))
    try:
        await store.queue.ensure_group()
        failing_cluster.stop()
        assert await deliver(store.jobs, "j-ended", settings) is None
        assert [json.loads(line)["job_id"] for line in json_lines] == ["j-ended"]
    finally:
        await store.aclose()
