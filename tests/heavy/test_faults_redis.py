"""Redis faults, against a real redis-server: restarted mid-job (the job's state comes back from the AOF and the job
completes), down for longer than the store's retries, with its AOF and without (the worker keeps claiming, the job
it ran is resumed, not failed), three times during one job (each cut a stop, not one of the deaths that give a job
up), and refusing writes with MISCONF (its disk full), READONLY (a demoted primary) or OOM (at its maxmemory): the same
as down, not a trajectory's crash."""

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
from pathlib import Path

import pytest

from heavy.embedded_redis import EmbeddedRedis
from heavy.store import Keys, Store
from heavy.worker import Worker
from heavy.worker.runner import CLAIM_RETRY_S
from tests.heavy.fakes import ScriptedBackend
from tests.heavy.redis_proxy import RedisProxy
from tests.heavy.worker_helpers import (
    WORKER_SETTINGS,
    all_events,
    assert_gap_free,
    executor,
    finished,
    researcher,
    submit_job,
    wait_for,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@contextlib.asynccontextmanager
async def worker_on_own_redis(tmp_path_factory, key_prefix: str, delay_s: float = 0.4):
    """(server, store, worker task): a worker whose model steps take `delay_s`, on a redis-server of the test's own
    with its AOF on, which the test stops, kills and starts again."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("aof")).start()
    store = Store.connect(server.url, WORKER_SETTINGS, Keys(key_prefix))
    stop_worker = asyncio.Event()
    slow = ScriptedBackend(researcher, delay_s=lambda r: delay_s)
    worker = asyncio.create_task(Worker(store, slow, executor(), WORKER_SETTINGS, name="w").run(stop_worker))
    try:
        yield server, store, worker
    finally:
        stop_worker.set()
        await asyncio.gather(worker, return_exceptions=True)
        await store.aclose()
        server.stop()


async def test_redis_restart_mid_job_state_comes_back_from_the_aof(tmp_path_factory, key_prefix):
    async with worker_on_own_redis(tmp_path_factory, key_prefix) as (server, store, worker):
        job_id = await submit_job(store)
        await wait_for(lambda: store.jobs.load_checkpoints(job_id, 3), timeout_s=30)
        before = await all_events(store, job_id)
        job_before = await store.jobs.get(job_id)
        server.stop()  # SIGTERM: redis-server flushes the AOF and exits
        server.start()
        job_after = await store.jobs.get(job_id)
        assert (job_after.question, job_after.params, job_after.status) == (
            job_before.question, job_before.params, job_before.status)
        assert (await all_events(store, job_id))[:len(before)] == before
        job, events = await wait_for(lambda: finished(store, job_id), timeout_s=60)
        assert job.status == "done"
        assert_gap_free(events, trajectories=3)
        assert (await store.jobs.get_report(job_id)) is not None


def logged(caplog, text: str) -> bool:
    return any(text in record.getMessage() for record in caplog.records)


def run_cut(caplog, job_id: str) -> bool:
    """Whether the job's run has met the outage (or, before it was told from a failure, failed or crashed)."""
    return any(text in record.getMessage() for record in caplog.records
               for text in (f"job {job_id}: Redis is not taking", f"job {job_id}: worker error", "crashed"))


def kill_redis(server: EmbeddedRedis, *, keep_data: bool) -> None:
    """SIGKILL: no flush; without `keep_data` its AOF is gone too, as on a server run without persistence."""
    server.process.kill()
    server.process.wait()
    server.process = None
    if not keep_data:
        shutil.rmtree(server.data_dir / "appendonlydir")


async def test_redis_down_past_the_stores_retries_leaves_the_job_to_be_resumed_and_the_worker_claiming(
        tmp_path_factory, key_prefix, caplog):
    async with worker_on_own_redis(tmp_path_factory, key_prefix) as (server, store, worker):

        async def outage_felt(job_id: str) -> bool:  # by the claim loop and by the job's run, both past their retries
            return worker.done() or (logged(caplog, "claiming jobs failed") and run_cut(caplog, job_id))
        job_id = await submit_job(store)
        await wait_for(lambda: store.jobs.load_checkpoints(job_id, 3), timeout_s=30)
        kill_redis(server, keep_data=True)
        await wait_for(lambda: outage_felt(job_id), timeout_s=60)
        server.start()
        # the run the outage cut is resumed from the AOF's checkpoints: not failed, no trajectory crashed
        job, events = await wait_for(lambda: finished(store, job_id), timeout_s=60)
        assert job.status == "done" and not worker.done()
        assert_gap_free(events, trajectories=3)
        _, result = await store.jobs.get_report(job_id)
        assert [t["error"] for t in result["trajectories"]] == [None] * 3

        # back without its data: the queue's group is made again, and new jobs run
        caplog.clear()
        kill_redis(server, keep_data=False)
        await wait_for(lambda: asyncio.sleep(0, result=worker.done() or logged(caplog, "claiming jobs failed")))
        server.start()
        job_id = await submit_job(store)
        job, _ = await wait_for(lambda: finished(store, job_id), timeout_s=60)
        assert job.status == "done" and not worker.done()


async def test_three_redis_outages_during_one_job_are_stops_not_deaths_and_the_job_is_not_given_up(
        tmp_path_factory, key_prefix, caplog, monkeypatch):
    monkeypatch.setattr("heavy.store.RECONNECT_RETRIES", 2)  # an outage outlasts the store's retries at once
    async with worker_on_own_redis(tmp_path_factory, key_prefix, delay_s=1.0) as (server, store, worker):

        async def running(attempt: int) -> bool:
            job = await store.jobs.get(job_id)
            return job.terminal or (job.attempts == attempt and job.status == "running")
        job_id = await submit_job(store)
        for attempt in (1, 2, 3):  # each run of the job is cut: three deaths would give it up
            await wait_for(lambda attempt=attempt: running(attempt), timeout_s=30)
            caplog.clear()
            kill_redis(server, keep_data=True)
            await wait_for(lambda: asyncio.sleep(0, result=run_cut(caplog, job_id)), timeout_s=30)
            server.start()
        job, events = await wait_for(lambda: finished(store, job_id), timeout_s=60)
        assert (job.status, job.error, job.attempts, job.stops) == ("done", "", 4, 3)
        assert_gap_free(events, trajectories=3)


async def test_an_outage_past_the_lease_cutting_two_workers_is_a_stop_not_a_death_whoever_is_back_first(
        tmp_path_factory, key_prefix, caplog, monkeypatch):
    """Each worker reaches Redis through a proxy of its own, cut at once (Redis unreachable for every worker) for
    longer than the lease; the rescuer is back before the job's owner, which then records its cut run's stop."""
    monkeypatch.setattr("heavy.store.RECONNECT_RETRIES", 2)  # an outage outlasts the store's retries at once
    caplog.set_level(logging.INFO, "heavy.worker")
    settings = WORKER_SETTINGS.model_copy(update={"worker_lease_s": 6.0})
    slow = ScriptedBackend(researcher, delay_s=lambda r: 1.0)
    server = EmbeddedRedis(tmp_path_factory.mktemp("aof")).start()
    stop = asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(server.stop)
        proxies, stores = {}, {}
        for name in ("owner", "rescuer"):
            proxies[name] = await stack.enter_async_context(
                RedisProxy(tmp_path_factory.mktemp("proxy") / "redis.sock", server.socket_path))
            stores[name] = Store.connect(proxies[name].url, settings, Keys(key_prefix))
            stack.push_async_callback(stores[name].aclose)

        def start(name: str) -> asyncio.Task:
            return asyncio.create_task(Worker(stores[name], slow, executor(), settings, name=name).run(stop))
        job_id = await submit_job(stores["owner"])
        workers = [start("owner")]
        await wait_for(lambda: stores["owner"].jobs.load_checkpoints(job_id, 3), timeout_s=30)
        workers.append(start("rescuer"))
        stack.push_async_callback(asyncio.gather, *workers, return_exceptions=True)
        stack.callback(stop.set)
        await wait_for(lambda: asyncio.sleep(0, result=logged(caplog, "worker rescuer started")))
        for proxy in proxies.values():
            proxy.set_cut(True)
        await wait_for(lambda: asyncio.sleep(0, result=run_cut(caplog, job_id)), timeout_s=30)
        await asyncio.sleep(settings.worker_lease_s)  # the owner's lease runs out
        proxies["rescuer"].set_cut(False)
        await asyncio.sleep(2 * CLAIM_RETRY_S)  # the rescuer polls the queue a while before the owner is back
        proxies["owner"].set_cut(False)
        job, events = await wait_for(lambda: finished(stores["owner"], job_id), timeout_s=60)
        assert (job.status, job.attempts, job.stops) == ("done", 2, 1)
        assert not logged(caplog, "stop not recorded")
        assert_gap_free(events, trajectories=3)


async def persistence_is(store: Store, status: str) -> bool:
    info = await store.redis.info("persistence")
    return info["rdb_last_bgsave_status"] == status and not info["rdb_bgsave_in_progress"]


async def refuse_writes(store: Store, server: EmbeddedRedis) -> None:
    """Redis answering MISCONF to every write, as when its disk is full: snapshots on, and the last one failed
    (its child killed while it waits on every key)."""
    await store.redis.config_set("save", "3600 1")
    await store.redis.config_set("rdb-key-save-delay", 10_000_000)  # µs a key: the child waits to be killed
    await store.redis.bgsave()
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
    child = await wait_for(lambda: asyncio.sleep(0, result=children.read_text().split()))
    os.kill(int(child[0]), signal.SIGKILL)
    await wait_for(lambda: persistence_is(store, "err"))


async def take_writes(store: Store, server: EmbeddedRedis) -> None:
    """The disk freed: a snapshot that succeeds ends the MISCONF."""
    await store.redis.config_set("rdb-key-save-delay", 0)
    await store.redis.bgsave()
    await wait_for(lambda: persistence_is(store, "ok"))


async def become_replica(store: Store, server: EmbeddedRedis) -> None:
    """READONLY to every write, as from a primary demoted by a failover: a replica of a primary it cannot reach
    yet (so it keeps its data; a sync would replace it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        nobody = probe.getsockname()[1]
    await store.redis.replicaof("127.0.0.1", nobody)


async def become_primary(store: Store, server: EmbeddedRedis) -> None:
    await store.redis.replicaof("NO", "ONE")


async def fill_memory(store: Store, server: EmbeddedRedis) -> None:
    """OOM to every write: past its maxmemory, and (the default policy) evicting nothing."""
    await store.redis.config_set("maxmemory-policy", "noeviction")
    await store.redis.config_set("maxmemory", 1)


async def free_memory(store: Store, server: EmbeddedRedis) -> None:
    await store.redis.config_set("maxmemory", 0)


@pytest.mark.parametrize(("refuse", "take"), [(refuse_writes, take_writes), (become_replica, become_primary),
                                               (fill_memory, free_memory)], ids=["misconf", "readonly", "oom"])
async def test_redis_refusing_writes_stops_the_run_unended_and_the_job_resumes_once_it_takes_them(
        tmp_path_factory, key_prefix, caplog, refuse, take):
    async with worker_on_own_redis(tmp_path_factory, key_prefix) as (server, store, worker):
        job_id = await submit_job(store)
        await wait_for(lambda: store.jobs.load_checkpoints(job_id, 3), timeout_s=30)
        await refuse(store, server)
        await wait_for(lambda: asyncio.sleep(0, result=run_cut(caplog, job_id)), timeout_s=30)
        await take(store, server)
        # not a trajectory crashed, nor a worker death: a stop, and the job resumed from its checkpoints
        job, events = await wait_for(lambda: finished(store, job_id), timeout_s=60)
        assert (job.status, job.attempts, job.stops) == ("done", 2, 1)
        assert_gap_free(events, trajectories=3)
        _, result = await store.jobs.get_report(job_id)
        assert [t["error"] for t in result["trajectories"]] == [None] * 3
