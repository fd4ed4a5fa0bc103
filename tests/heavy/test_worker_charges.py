"""What a job is charged when its workers change hands mid-aggregation or it is cancelled, with the worker in
process against real Redis: the job's tokens, its cost and its tenant's charge agree with what its backends
counted; a job given up, or failed before its trajectories ended, costs what its checkpoints hold."""

import asyncio
from dataclasses import asdict

import pytest

from heavy.llm.types import LLMError, Meter, Usage
from heavy.store.records import AGGREGATING, RUNNING
from heavy.worker import Worker
from tests.heavy.api_helpers import app_for, client_for
from tests.heavy.fakes import STEP_USAGE, ScriptedBackend, call
from tests.heavy.live_service import PRICED
from tests.heavy.service_proc import CUT_USAGE
from tests.heavy.worker_helpers import JOB, WORKER_SETTINGS, ended, executor, researcher, step_of, wait_for

pytestmark = pytest.mark.anyio


class ServerCount:
    """The scripted server, counting at its end what it did: each reply's usage, and what a request cut or failed
    had spent by then (its meter)."""

    def __init__(self, backend: ScriptedBackend) -> None:
        self.backend, self.name = backend, backend.name
        self.spent = Usage()

    async def chat(self, messages, tools, sampling, *, meter: Meter | None = None, **kwargs):
        meter = meter or Meter()
        try:
            completion = await self.backend.chat(messages, tools, sampling, meter=meter, **kwargs)
        except BaseException:
            self.spent += meter.usage
            raise
        self.spent += completion.usage
        return completion

    def stream(self, *args, **kwargs):
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


def slow_after_first_search(request) -> float:
    return 60 if request.trajectory >= 0 and step_of(request) >= 1 else 0


def slow_aggregation(request) -> float:
    return 60 if request.trajectory < 0 else 0


def failing_trajectories(request):
    if request.trajectory >= 0:
        raise LLMError("HTTP 500")  # after its server worked: CUT_USAGE
    return researcher(request)


def disagreeing(request):
    """Each trajectory answers another module: the vote is spread, and the judge reads their pages."""
    if request.trajectory >= 0 and not request.forced and step_of(request) >= 2:
        return call("answer", answer=["argparse", "getopt", "optparse"][request.trajectory], confidence=0.9)
    return researcher(request)


async def searched(client, job_id, backend):  # every trajectory's step after its first search sent, held
    await wait_for(lambda: asyncio.sleep(0, result=sum(r.trajectory >= 0 and step_of(r) >= 1
                                                       for r in backend.requests) == 3))


async def aggregating(client, job_id, backend):
    await wait_for(lambda: asyncio.sleep(0, result=any(r.trajectory < 0 for r in backend.requests)))


def asking(action):
    async def then(client, job_id, backend):
        await (searched if action == "finish" else aggregating)(client, job_id, backend)
        (await client.post(f"/v1/jobs/{job_id}/{action}")).raise_for_status()
    return then


async def cancelling_while_running(client, job_id, backend):
    await searched(client, job_id, backend)
    (await client.post(f"/v1/jobs/{job_id}/cancel")).raise_for_status()


ENDINGS = {  # how the job ends: its script, its delays, what the test does meanwhile, its status and stop
    "done": (researcher, lambda r: 0, None, {}, ("done", "all_done")),
    "done_answer_mode": (disagreeing, lambda r: 0, None, {"mode": "answer"}, ("done", "all_done")),
    "partial": (researcher, lambda r: 0, None, {"job_tokens": 2_000}, ("partial", "job_tokens")),
    "finish_now": (researcher, slow_after_first_search, asking("finish"), {}, ("partial", "finish_now")),
    "failed": (failing_trajectories, lambda r: 0, None, {}, ("failed", "")),
    "cancelled": (researcher, slow_after_first_search, cancelling_while_running, {}, ("cancelled", "cancelled")),
    "cancelled_aggregating": (researcher, slow_aggregation, asking("cancel"), {}, ("cancelled", "cancelled")),
}


@pytest.mark.parametrize("ending", ENDINGS)
async def test_however_a_job_ends_its_tokens_and_cost_are_what_its_server_counted_and_its_tenant_is_charged_them(
        store, ending):
    script, delay_s, meanwhile, params, (status, stop_reason) = ENDINGS[ending]
    server = ServerCount(ScriptedBackend(script, delay_s=delay_s, in_flight=lambda request: CUT_USAGE))
    key = await store.tenants.create_key("acme")
    stop = asyncio.Event()
    worker = asyncio.create_task(Worker(store, server, executor(), PRICED, name="w").run(stop))
    try:
        async with client_for(app_for(store, PRICED), key.secret) as client:
            job_id = (await client.post("/v1/jobs", json={**JOB, **params})).json()["id"]
            if meanwhile is not None:
                await meanwhile(client, job_id, server.backend)
            await wait_for(lambda: ended(store, job_id))
            shown = (await client.get(f"/v1/jobs/{job_id}")).json()
    finally:
        stop.set()
        await worker
    assert (shown["status"], shown["stop_reason"] or "") == (status, stop_reason)
    spent = server.spent
    assert spent.total_tokens > 0 and shown["tokens"] == spent.total_tokens
    assert shown["cost_usd"] == pytest.approx((spent.prompt_tokens * PRICED.price_per_mtok_prompt
                                               + spent.completion_tokens * PRICED.price_per_mtok_completion) / 1e6)
    tenant = await store.tenants.get("acme")  # charged what it spent, its grant given back
    assert (tenant.tokens_used, tenant.tokens_reserved) == (spent.total_tokens, 0)
    report = await store.jobs.get_report(job_id)
    if report is not None:
        assert report[1]["tokens"]["total"] == spent.total_tokens and report[1]["cost_usd"] == shown["cost_usd"]


async def run_w2(store, backend, *, until):
    """A worker "w2" on `backend`, run until `until` (a wait_for predicate) holds, then stopped; that value."""
    stop = asyncio.Event()
    worker = asyncio.create_task(Worker(store, backend, executor(), WORKER_SETTINGS, name="w2").run(stop))
    try:
        return await wait_for(until)
    finally:
        stop.set()
        await worker


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
    job = await run_w2(store, ScriptedBackend(researcher), until=lambda: ended(store, job_id))
    _, result = await store.jobs.get_report(job_id)
    trajectories = sum(t["tokens"] for t in result["trajectories"])  # w2's, and its report pass, and w1's
    assert job.tokens == result["tokens"]["total"] == trajectories + 2 * STEP_USAGE.total_tokens
    assert (await store.tenants.get("acme")).tokens_used == job.tokens


async def test_a_job_whose_earlier_usage_a_newer_worker_gave_more_fields_is_run_and_charged_it(store):
    """After a rollback (or by an older worker during a rolling upgrade) a job whose aggregation a newer worker began
    is taken over: a field its Usage gained in the job's earlier_usage is passed over (heavy/compat.py), not a
    TypeError at every claim until the job is given up."""
    key = await store.tenants.create_key("acme")
    async with client_for(app_for(store, WORKER_SETTINGS), key.secret) as client:
        job_id = (await client.post("/v1/jobs", json=JOB)).json()["id"]
    await store.jobs.update(job_id, status=AGGREGATING, worker="w1", attempts=1,
                            earlier_usage={**asdict(STEP_USAGE), "added_later": 1})
    job = await run_w2(store, ScriptedBackend(researcher), until=lambda: ended(store, job_id))
    assert job.status == "done", job.error
    _, result = await store.jobs.get_report(job_id)
    trajectories = sum(t["tokens"] for t in result["trajectories"])
    assert job.tokens == result["tokens"]["total"] == trajectories + 2 * STEP_USAGE.total_tokens


async def test_a_job_stopped_whose_earlier_usage_a_newer_worker_gave_more_fields_is_recorded_as_a_stop(store):
    """A worker stopped on purpose (SIGTERM; or cut by a Redis outage, once Redis is back) records its run as a stop,
    handing over the job's earlier_usage: read there with Usage(**...), a field a newer worker added raised
    TypeError, suppressed, so the stop went unrecorded and counted as one of the deaths that give the job up."""
    key = await store.tenants.create_key("acme")
    async with client_for(app_for(store, WORKER_SETTINGS), key.secret) as client:
        job_id = (await client.post("/v1/jobs", json=JOB)).json()["id"]
    await store.jobs.update(job_id, earlier_usage={**asdict(STEP_USAGE), "added_later": 1})
    # stopped (as by SIGTERM) once job_started and a step are out: the run is under way
    await run_w2(store, ScriptedBackend(researcher, delay_s=slow_after_first_search),
                 until=lambda: store.jobs.read_events(job_id, 1))
    job = await store.jobs.get(job_id)
    assert (job.status, job.attempts, job.stops) == (RUNNING, 1, 1)
    assert job.earlier_usage == asdict(STEP_USAGE)  # what it was handed; its trajectories' spend is checkpointed


class TinyServer(ScriptedBackend):
    """A server whose context cannot hold a step: the job fails (ValueError) before its trajectories run."""

    async def served_context(self) -> int:
        return 64


RESUMED_FAILURES = {  # the worker resuming a job whose first worker died mid-run, how it fails, and its error
    "given_up": (ScriptedBackend, 3, "gave up after 3 attempts"),
    "failed_before_its_trajectories_ended": (TinyServer, 1, "ValueError"),
}


@pytest.mark.parametrize("failure", RESUMED_FAILURES)
async def test_a_job_failed_before_its_trajectories_ended_costs_what_its_checkpoints_spent(store, failure):
    """Only the checkpoints say what such a job spent (no backend counted it all): its tokens and its cost are
    theirs, at the deployment's prices, not a cost left unknown."""
    server, attempts, error = RESUMED_FAILURES[failure]
    key = await store.tenants.create_key("acme")
    first = ScriptedBackend(researcher, delay_s=lambda r: 60 if r.trajectory >= 0 and step_of(r) == 2 else 0)
    w1 = asyncio.create_task(Worker(store, first, executor(), PRICED, name="w1").run(asyncio.Event()))
    async with client_for(app_for(store, PRICED), key.secret) as client:
        job_id = (await client.post("/v1/jobs", json=JOB)).json()["id"]
        await wait_for(lambda: asyncio.sleep(0, result=sum(r.trajectory >= 0 and step_of(r) == 2
                                                           for r in first.requests) == 3))
        w1.cancel()  # like a crash: no status change, no acknowledgement
        await asyncio.gather(w1, return_exceptions=True)
        await store.jobs.update(job_id, attempts=attempts)  # given up: as if every worker that took it had died
        saved = await store.jobs.load_checkpoints(job_id, 3)  # each trajectory's step before its last
        spent = sum((Usage(c["usage"]["prompt_tokens"], c["usage"]["completion_tokens"]) for c in saved.values()),
                    Usage())
        stop = asyncio.Event()
        w2 = asyncio.create_task(Worker(store, server(researcher), executor(), PRICED, name="w2").run(stop))
        try:
            await wait_for(lambda: ended(store, job_id))
        finally:
            stop.set()
            await w2
        shown = (await client.get(f"/v1/jobs/{job_id}")).json()
    assert shown["status"] == "failed" and error in shown["error"]
    assert spent.total_tokens > 0 and shown["tokens"] == spent.total_tokens
    assert shown["cost_usd"] == pytest.approx((spent.prompt_tokens * PRICED.price_per_mtok_prompt
                                               + spent.completion_tokens * PRICED.price_per_mtok_completion) / 1e6)
