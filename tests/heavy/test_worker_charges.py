"""What a job is charged when its workers change hands mid-aggregation or it is cancelled, with the worker in
process against real Redis: the job's tokens, its cost and its tenant's charge agree with what its backends
counted."""

import asyncio
from dataclasses import asdict

import pytest

from heavy.store.records import AGGREGATING, RUNNING
from heavy.worker import Worker
from tests.heavy.api_helpers import app_for, client_for
from tests.heavy.fakes import STEP_USAGE, ScriptedBackend
from tests.heavy.worker_helpers import JOB, WORKER_SETTINGS, ended, executor, researcher, wait_for

pytestmark = pytest.mark.anyio


async def test_a_worker_taking_a_job_over_charges_what_its_last_worker_kept_until_the_claim_fenced_it_off(
        store, monkeypatch):
    """w1, stalled past its lease while aggregating, keeps its report pass's spend in the job (runner.py
    save_aggregation) after w2 read the job and before w2's claim fenced w1 off: the write is w1's to make, and w2
    must charge it."""
    key = await store.tenants.create_key("acme")
    async with client_for(app_for(store, WORKER_SETTINGS), key.secret) as client:
        job_id = (await client.post("/v1/jobs", json=JOB)).json()["id"]
    await store.jobs.update(job_id, status=AGGREGATING, worker="w1", attempts=1)  # w1's run, as its lease lapsed
    update = store.jobs.update

    async def w1_saves_just_before_w2_claims(job_id, **fields):
        if fields.get("worker") == "w2":
            await update(job_id, allowed=(RUNNING, AGGREGATING), owner="w1", earlier_usage=asdict(STEP_USAGE))
        return await update(job_id, **fields)
    monkeypatch.setattr(store.jobs, "update", w1_saves_just_before_w2_claims)
    stop = asyncio.Event()
    worker = asyncio.create_task(Worker(store, ScriptedBackend(researcher), executor(), WORKER_SETTINGS,
                                        name="w2").run(stop))
    try:
        job = await wait_for(lambda: ended(store, job_id))
    finally:
        stop.set()
        await worker
    _, result = await store.jobs.get_report(job_id)
    trajectories = sum(t["tokens"] for t in result["trajectories"])  # w2's, and its report pass, and w1's
    assert job.tokens == result["tokens"]["total"] == trajectories + 2 * STEP_USAGE.total_tokens
    assert (await store.tenants.get("acme")).tokens_used == job.tokens
