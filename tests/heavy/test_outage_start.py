"""Started while Redis is unreachable (its address refusing connections until a loopback proxy to it listens there,
tests/heavy/redis_proxy.py): a worker
logs it once and waits for Redis, then runs jobs, rather than exit (a `heavy worker` pod crash-looping through the
outage); the API serves /healthz, and 503 with Retry-After until Redis is back, rather than fail its start-up."""

import asyncio
import logging

import pytest

from heavy.api import create_app
from heavy.api.errors import STORE_RETRY_S
from heavy.store import Keys, Store
from heavy.worker import Worker
from tests.heavy.api_helpers import client_for
from tests.heavy.fakes import ScriptedBackend
from tests.heavy.redis_proxy import RedisProxy
from tests.heavy.worker_helpers import WORKER_SETTINGS, executor, finished, researcher, submit_job, wait_for

pytestmark = pytest.mark.anyio


def claims_failed(caplog) -> list[logging.LogRecord]:
    return [record for record in caplog.records if "claiming jobs failed" in record.getMessage()]


async def test_a_worker_started_while_redis_is_unreachable_waits_for_it_then_runs_jobs(
        tmp_path_factory, redis_server, key_prefix, caplog, monkeypatch):
    monkeypatch.setattr("heavy.store.RECONNECT_RETRIES", 2)  # each try outlasts the store's retries at once
    caplog.set_level(logging.DEBUG, "heavy.worker")
    network = RedisProxy(tmp_path_factory.mktemp("proxy") / "redis.sock", redis_server.socket_path)
    store = Store.connect(network.url, WORKER_SETTINGS, Keys(key_prefix))
    stop = asyncio.Event()
    worker = asyncio.create_task(
        Worker(store, ScriptedBackend(researcher), executor(), WORKER_SETTINGS, name="w").run(stop))
    try:
        await wait_for(lambda: asyncio.sleep(0, result=worker.done() or len(claims_failed(caplog)) >= 2))
        assert not worker.done()
        async with network:  # Redis reachable
            job_id = await submit_job(store)
            job, _ = await wait_for(lambda: finished(store, job_id), timeout_s=60)
    finally:
        stop.set()
        await asyncio.gather(worker, return_exceptions=True)
        await store.aclose()
    assert job.status == "done"
    assert [record.levelno for record in claims_failed(caplog)][:2] == [logging.WARNING, logging.DEBUG]  # once
    assert "claiming jobs again: Redis answers" in caplog.text


async def test_the_api_started_while_redis_is_unreachable_serves_healthz_and_503s_until_it_is_back(
        tmp_path_factory, redis_server, monkeypatch):
    monkeypatch.setattr("heavy.store.RECONNECT_RETRIES", 2)
    network = RedisProxy(tmp_path_factory.mktemp("proxy") / "redis.sock", redis_server.socket_path)
    app = create_app(WORKER_SETTINGS.model_copy(update={"redis_url": network.url}))
    async with app.router.lifespan_context(app), client_for(app, "no-such-key") as client:
        assert (await client.get("/healthz")).status_code == 200
        for path in ("/readyz", "/v1/jobs"):
            down = await client.get(path)
            assert (down.status_code, down.headers["Retry-After"]) == (503, str(STORE_RETRY_S)), path
        async with network:  # Redis reachable
            assert (await client.get("/readyz")).status_code == 200
            assert (await client.get("/v1/jobs")).status_code == 401  # Redis answers: the key is unknown
