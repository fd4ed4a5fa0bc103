"""The worker's sweep, every SWEEP_S: held jobs past their approval window are cancelled, the queue consumers of
workers gone are forgotten, and expired jobs leave the lists of tenants that never list them."""

import pytest

from heavy.worker import runner
from tests.heavy.fakes import ScriptedBackend
from tests.heavy.test_worker import client, start_worker, status_is  # noqa: F401 (fixtures)
from tests.heavy.worker_helpers import JOB, researcher, submit_job, wait_for

pytestmark = pytest.mark.anyio


async def test_a_worker_cancels_a_job_held_for_review_past_its_approval_window(
        client, store, start_worker, monkeypatch):  # noqa: F811 (fixtures)
    monkeypatch.setattr(runner, "SWEEP_S", 0.05)
    store.jobs.approval_window_s = 0.1
    job = (await client.post("/v1/jobs", json={**JOB, "review": True})).json()
    assert job["status"] == "awaiting_approval" and job["approve_by"] == pytest.approx(job["created_at"] + 0.1)
    start_worker(ScriptedBackend(researcher))
    expired = await status_is(client, job["id"], "cancelled")
    assert (expired["stop_reason"], expired["error"]) == ("approval_expired", "not approved within 0.1 s")
    assert (await client.post(f"/v1/jobs/{job['id']}/approve")).status_code == 409


async def test_a_worker_forgets_the_queue_consumers_of_workers_gone(
        client, store, start_worker, monkeypatch):  # noqa: F811 (fixtures)
    monkeypatch.setattr(runner, "SWEEP_S", 0.05)
    monkeypatch.setattr(runner, "GONE_WORKER_S", 0.0)
    for n in range(3):  # restarts: each worker named a consumer, ran a job and stopped
        await submit_job(store)
        (claim,) = await store.queue.claim_new(f"stopped-{n}", block_ms=10)
        await store.queue.ack(claim.entry_id)
    assert len(await store.redis.xinfo_consumers(store.queue.keys.jobs_stream, "workers")) == 3
    start_worker(ScriptedBackend(researcher))

    async def only_live_ones():
        names = {c["name"] for c in await store.redis.xinfo_consumers(store.queue.keys.jobs_stream, "workers")}
        return not names & {"stopped-0", "stopped-1", "stopped-2"}
    await wait_for(only_live_ones)


async def test_a_worker_takes_expired_jobs_off_the_lists_of_a_tenant_that_never_lists_them(
        store, start_worker, monkeypatch):  # noqa: F811 (fixtures)
    """A page takes its own tenant's expired jobs off its list and status sets: one that never lists kept them all."""
    monkeypatch.setattr(runner, "SWEEP_S", 0.05)
    store.jobs.retention_ms = 1  # ended jobs expire at once
    for _ in range(3):
        job, _ = await store.jobs.submit("acme", question="q", mode="report", params={"trajectories": 1})
        await store.jobs.finish(job, "done", report=("# Report", {}))
    keys = store.jobs.keys
    lists = [keys.tenant_jobs("acme"), keys.tenant_expiring("acme"), keys.tenant_status_jobs("acme", "done")]

    async def listed():
        return [await store.redis.zcard(key) for key in lists]
    assert await listed() == [3, 3, 3]
    await store.tenants.create_key("acme")  # a tenant of the deployment
    start_worker(ScriptedBackend(researcher))

    async def none_listed():
        return await listed() == [0, 0, 0]
    await wait_for(none_listed)
