"""The worker with a scripted backend against real Redis, driven through the REST API: a job runs to its report,
cancel is honoured while models run, finish-now gives a partial report, a job taken over from a dead worker
resumes from its checkpoints, and tenant token limits bound a job."""

import asyncio
import time

import pytest

from heavy.aggregate import REPORT_REQUEST
from heavy.llm.types import LLMError, Usage
from heavy.worker import Worker, runner
from tests.heavy.api_helpers import app_for, client_for, parse_sse
from tests.heavy.fakes import STEP_USAGE, ScriptedBackend, call
from tests.heavy.worker_helpers import (
    JOB,
    WORKER_SETTINGS,
    assert_gap_free,
    executor,
    researcher,
    step_of,
    wait_for,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(store):
    key = await store.tenants.create_key("acme")
    async with client_for(app_for(store, WORKER_SETTINGS), key.secret) as client:
        yield client


class RunningWorker:
    def __init__(self, store, backend, name):
        self.worker = Worker(store, backend, executor(), WORKER_SETTINGS, name=name)
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.worker.run(self.stop))

    async def close(self):
        self.stop.set()
        await asyncio.gather(self.task, return_exceptions=True)  # a "crashed" worker's task was cancelled


@pytest.fixture
async def start_worker(store):
    workers = []

    def start(backend, name="w1"):
        workers.append(RunningWorker(store, backend, name))
        return workers[-1]
    yield start
    for worker in workers:
        await worker.close()


async def status_is(client, job_id, *statuses):
    async def check():
        job = (await client.get(f"/v1/jobs/{job_id}")).json()
        return job if job["status"] in statuses else None
    return await wait_for(check)


async def test_a_job_runs_to_its_report_with_a_gap_free_event_stream(client, store, start_worker):
    start_worker(ScriptedBackend(researcher))
    job = (await client.post("/v1/jobs", json=JOB)).json()
    done = await status_is(client, job["id"], "done", "partial", "failed")
    assert done["status"] == "done" and done["stop_reason"] == "all_done" and done["attempts"] == 1
    events = parse_sse((await client.get(f"/v1/jobs/{job['id']}/events")).text)
    data = [e["data"] for e in events]
    assert_gap_free(data, trajectories=3)
    assert [d["type"] for d in data][-2:] == ["aggregating", "report_ready"]
    assert all(d["schema_version"] == 1 and d["job_id"] == job["id"] for d in data)
    report = (await client.get(f"/v1/jobs/{job['id']}/report")).json()
    assert report["answer"] and len(report["trajectories"]) == 3 and report["sources"]
    assert done["tokens"] == report["tokens"]["total"] > 0
    assert (await store.tenants.get("acme")).tokens_used == done["tokens"]
    markdown = (await client.get(f"/v1/jobs/{job['id']}/report", headers={"Accept": "text/markdown"})).text
    assert "http://corpus/argparse" in markdown
    metrics = (await client.get("/metrics")).text
    assert 'heavy_tool_calls_total{ok="true",tool="search"}' in metrics and "heavy_steps_total" in metrics


async def test_a_job_whose_report_pass_failed_ends_partial_saying_why_in_its_report_and_events(
        client, store, start_worker):
    def script(request):
        if request.request_id == "report":
            raise LLMError("HTTP 503: the model endpoint is restarting")
        return researcher(request)

    start_worker(ScriptedBackend(script))
    job = (await client.post("/v1/jobs", json=JOB)).json()
    ended = await status_is(client, job["id"], "done", "partial", "failed")
    assert (ended["status"], ended["stop_reason"]) == ("partial", "all_done")
    report = (await client.get(f"/v1/jobs/{job['id']}/report")).json()
    assert "HTTP 503: the model endpoint is restarting" in report["report_error"] and report["partial"]
    assert report["answer"] == "argparse" and report["sources"]  # what the trajectories found is still there
    assert "the report pass, which writes the findings, wrote none" in report["markdown"]
    ready = parse_sse((await client.get(f"/v1/jobs/{job['id']}/events")).text)[-1]["data"]
    assert ready["type"] == "report_ready" and ready["partial"] and ready["report_error"] == report["report_error"]


async def test_a_worker_dying_right_after_it_ended_a_job_has_written_its_report_and_terminal_event(
        client, store, start_worker, monkeypatch):
    """The report, the final status and the terminal event are one step: a worker that dies as soon as the status
    is in Redis leaves no job that ended without `report_ready` (its followers would wait for it in vain, and no
    later worker writes it: the job has ended)."""
    finish = store.jobs.finish

    async def finish_then_die(*args, **kwargs):
        await finish(*args, **kwargs)
        raise asyncio.CancelledError  # the worker's process is killed here

    monkeypatch.setattr(store.jobs, "finish", finish_then_die)
    start_worker(ScriptedBackend(researcher))
    job = (await client.post("/v1/jobs", json=JOB)).json()
    await status_is(client, job["id"], "done")
    events = await store.jobs.read_events(job["id"])
    assert events[-1]["type"] == "report_ready" and events[-1]["seq"] == len(events)
    assert (await store.jobs.get_report(job["id"]))[1]["answer"] == events[-1]["answer"]


async def test_a_worker_whose_job_was_taken_over_while_it_stalled_does_not_end_it(client, store, start_worker):
    """w1 stalls in the report pass past its lease and w2 takes the job over (its claim makes the job w2's): when w1
    wakes, its report must not become the job's, nor its status and tokens while w2 still runs it, and the entry is
    left for w2 to acknowledge."""
    backend = ScriptedBackend(researcher, aggregator_gate=asyncio.Event())
    w1 = start_worker(backend, "w1")
    job = (await client.post("/v1/jobs", json=JOB)).json()
    await wait_for(lambda: asyncio.sleep(0, result=any(r.trajectory < 0 for r in backend.requests)))
    await store.jobs.update(job["id"], status="running", worker="w2")  # what w2's claim writes (runner._run_job)
    backend.aggregator_gate.set()  # w1 wakes up
    await wait_for(lambda: asyncio.sleep(0, result=not w1.worker.running))
    await w1.close()
    after = await store.jobs.get(job["id"])
    assert (after.status, after.worker, after.tokens) == ("running", "w2", 0)
    assert await store.jobs.get_report(job["id"]) is None
    assert "report_ready" not in [e["type"] for e in await store.jobs.read_events(job["id"])]
    assert await store.queue.pending() == 1 and (await store.tenants.get("acme")).tokens_used == 0


async def test_a_worker_learning_its_job_was_taken_over_writes_nothing_more_and_stops_its_run(
        client, store, start_worker):
    """w1 stalls in its first steps and w2 takes the job over: when w1 wakes, before its next lease renewal could
    tell it, its events would duplicate w2's and its checkpoints overwrite w2's. Its first refused write stops its
    run: no further model request, no status change."""
    backend = ScriptedBackend(researcher, gate=asyncio.Event())
    w1 = start_worker(backend, "w1")
    job = (await client.post("/v1/jobs", json=JOB)).json()
    await wait_for(lambda: asyncio.sleep(0, result=sum(r.trajectory >= 0 for r in backend.requests) == 3))
    events, checkpoints = await store.jobs.read_events(job["id"]), await store.jobs.load_checkpoints(job["id"], 3)
    await store.jobs.update(job["id"], status="running", worker="w2")  # what w2's claim writes (runner._run_job)
    backend.gate.set()  # w1 wakes up
    await wait_for(lambda: asyncio.sleep(0, result=not w1.worker.running))
    assert await store.jobs.read_events(job["id"]) == events
    assert await store.jobs.load_checkpoints(job["id"], 3) == checkpoints
    assert len(backend.requests) == 3  # the three first steps' requests, gated when w2 took over
    after = await store.jobs.get(job["id"])
    assert (after.status, after.worker, after.tokens) == ("running", "w2", 0)
    assert await store.queue.pending() == 1


async def test_a_job_cancelled_and_deleted_as_a_worker_claims_it_is_acknowledged_at_once(
        client, store, start_worker, monkeypatch, caplog):
    """Between the worker reading a queued job and marking it running, its user cancels and deletes it: the worker
    counted a worker error (with a traceback) and left the entry pending, to be claimed again after its lease."""
    await client.post("/v1/jobs", json=JOB)
    update, deleted = store.jobs.update, asyncio.Event()

    async def cancelled_and_deleted_before_it_runs(job_id, **fields):
        if fields.get("status") == "running" and not deleted.is_set():
            await client.post(f"/v1/jobs/{job_id}/cancel")
            assert (await client.delete(f"/v1/jobs/{job_id}")).status_code == 204
            deleted.set()
        return await update(job_id, **fields)

    monkeypatch.setattr(store.jobs, "update", cancelled_and_deleted_before_it_runs)
    w1 = start_worker(ScriptedBackend(researcher))
    await wait_for(lambda: asyncio.sleep(0, result=deleted.is_set() and not w1.worker.running))
    await w1.close()
    assert await store.queue.pending() == 0 and await store.queue.depth() == 0
    assert "worker error" not in caplog.text


async def test_a_job_failing_as_it_starts_still_ends_with_job_failed(client, store, start_worker, monkeypatch):
    """Writing `job_started` fails (Redis refused it): the job fails, and its stream still ends with the event saying
    so (its followers would otherwise get no word of how it ended)."""
    append_event = store.jobs.append_event

    async def refuse_job_started(job_id, event, **kwargs):
        if event["type"] == "job_started":
            raise ConnectionError("Redis went away")
        return await append_event(job_id, event, **kwargs)

    monkeypatch.setattr(store.jobs, "append_event", refuse_job_started)
    start_worker(ScriptedBackend(researcher))
    job = (await client.post("/v1/jobs", json=JOB)).json()
    failed = await status_is(client, job["id"], "failed")
    assert failed["error"] == "ConnectionError: Redis went away"
    events = await store.jobs.read_events(job["id"])
    assert [(e["type"], e["error"]) for e in events] == [("job_failed", "ConnectionError: Redis went away")]


async def test_a_jobs_priority_goes_with_each_of_its_model_requests(client, start_worker):
    backend = ScriptedBackend(researcher)
    start_worker(backend)
    job = (await client.post("/v1/jobs", json={**JOB, "priority": -3})).json()
    assert job["params"]["priority"] == -3
    await status_is(client, job["id"], "done", "partial", "failed")
    assert {r.sampling.priority for r in backend.requests} == {-3}
    assert any(r.trajectory < 0 for r in backend.requests)  # the report pass too
    refused = await client.post("/v1/jobs", json={**JOB, "priority": 11})
    assert refused.status_code == 422 and "priority" in refused.json()["error"]["message"]


async def test_cancel_stops_a_running_job_and_aborts_its_requests(client, start_worker):
    backend = ScriptedBackend(researcher, delay_s=lambda r: 60)
    start_worker(backend)
    job = (await client.post("/v1/jobs", json=JOB)).json()
    await wait_for(lambda: asyncio.sleep(0, result=len(backend.requests) >= 3))
    await client.post(f"/v1/jobs/{job['id']}/cancel")
    cancelled = await status_is(client, job["id"], "cancelled", "done", "failed")
    assert cancelled["status"] == "cancelled" and cancelled["control"] is None
    assert len(backend.cancelled) == 3  # every in-flight model request was aborted
    events = parse_sse((await client.get(f"/v1/jobs/{job['id']}/events")).text)
    assert events[-1]["event"] == "job_cancelled" and "report_ready" not in [e["event"] for e in events]
    assert (await client.get(f"/v1/jobs/{job['id']}/report")).status_code == 409


async def test_cancel_while_aggregating_stops_the_report_pass_and_leaves_no_report(client, start_worker):
    backend = ScriptedBackend(researcher, delay_s=lambda r: 60 if r.trajectory < 0 else 0)  # a slow report pass
    start_worker(backend)
    job = (await client.post("/v1/jobs", json=JOB)).json()
    await status_is(client, job["id"], "aggregating")
    await wait_for(lambda: asyncio.sleep(0, result=any(r.trajectory < 0 for r in backend.requests)))
    await client.post(f"/v1/jobs/{job['id']}/cancel")
    cancelled = await status_is(client, job["id"], "cancelled", "done", "failed")
    assert cancelled["status"] == "cancelled" and cancelled["stop_reason"] == "cancelled"
    assert [r.request_id for r in backend.requests if r.trajectory < 0] == backend.cancelled  # the pass was aborted
    events = [e["event"] for e in parse_sse((await client.get(f"/v1/jobs/{job['id']}/events")).text)]
    assert events[-2:] == ["aggregating", "job_cancelled"]
    assert (await client.get(f"/v1/jobs/{job['id']}/report")).status_code == 409


async def test_finish_now_aggregates_what_exists(client, start_worker):
    slow_after_first_search = lambda r: 60 if r.trajectory >= 0 and step_of(r) >= 1 else 0  # noqa: E731
    start_worker(ScriptedBackend(researcher, delay_s=slow_after_first_search))
    job = (await client.post("/v1/jobs", json=JOB)).json()

    async def searched():  # job_started + 3 x (step, tool_call, tool_result): every trajectory has evidence
        return (await client.get(f"/v1/jobs/{job['id']}")).json()["events"] >= 10
    await wait_for(searched)
    await client.post(f"/v1/jobs/{job['id']}/finish")
    finished = await status_is(client, job["id"], "partial", "done", "failed", "cancelled")
    assert finished["status"] == "partial" and finished["stop_reason"] == "finish_now"
    report = (await client.get(f"/v1/jobs/{job['id']}/report")).json()
    assert report["partial"] and {t["stop_reason"] for t in report["trajectories"]} == {"finish_now"}


async def crash_before_the_last_step(client, store, start_worker, job_body=JOB) -> dict:
    """Submit a job; w1 dies (its task torn down without a word) while the trajectories wait on their last step."""
    first = ScriptedBackend(researcher, delay_s=lambda r: 60 if r.trajectory >= 0 and step_of(r) == 2 else 0)
    w1 = start_worker(first, "w1")
    job = (await client.post("/v1/jobs", json=job_body)).json()
    await wait_for(lambda: asyncio.sleep(0, result=sum(step_of(r) == 2 for r in first.requests
                                                       if r.trajectory >= 0) == 3))
    await wait_for(lambda: store.jobs.load_checkpoints(job["id"], 3))
    w1.task.cancel()  # like a crash: no status change, no acknowledgement
    await w1.close()
    assert (await client.get(f"/v1/jobs/{job['id']}")).json()["status"] == "running"
    return job


async def test_a_job_of_a_dead_worker_is_resumed_from_checkpoints_by_another(client, store, start_worker):
    """w2 claims the job of the crashed w1 after the lease and continues after the checkpointed steps: no step runs
    twice, no event twice."""
    job = await crash_before_the_last_step(client, store, start_worker)

    second = ScriptedBackend(researcher)
    start_worker(second, "w2")
    done = await status_is(client, job["id"], "done", "partial", "failed")
    assert done["status"] == "done" and done["attempts"] == 2
    resumed_steps = {step_of(r) for r in second.requests if r.trajectory >= 0}
    assert resumed_steps == {2}  # steps 0 and 1 came from the checkpoints
    events = [e["data"] for e in parse_sse((await client.get(f"/v1/jobs/{job['id']}/events")).text)]
    assert_gap_free(events, trajectories=3)
    assert events[-1]["type"] == "report_ready"
    report = (await client.get(f"/v1/jobs/{job['id']}/report")).json()
    assert [t["steps"] for t in report["trajectories"]] == [3, 3, 3]
    assert await store.queue.pending() == 0


async def test_a_resumed_job_keeps_its_deadline_from_when_it_first_started(client, store, start_worker):
    """The job's clock does not restart on a takeover: resumed past its deadline, the trajectories give their
    forced answers at once instead of running their last step."""
    job = await crash_before_the_last_step(client, store, start_worker, {**JOB, "deadline_s": 600})
    await store.jobs.update(job["id"], started=time.time() - 601)  # as if w1 had died ten minutes in
    second = ScriptedBackend(researcher)
    start_worker(second, "w2")
    done = await status_is(client, job["id"], "done", "partial", "failed")
    report = (await client.get(f"/v1/jobs/{job['id']}/report")).json()
    assert [t["stop_reason"] for t in report["trajectories"]] == ["deadline"] * 3, report["trajectories"]
    assert all(r.forced for r in second.requests if r.trajectory >= 0)  # no step 2: the forced answers only
    assert done["status"] == "partial" and report["answer"] == "argparse"


async def test_a_job_resumed_by_a_worker_whose_clock_runs_ahead_keeps_its_deadline(client, store, start_worker,
                                                                                   monkeypatch):
    """The job's start and the resuming worker's now are both read on Redis's clock: w2, whose clock is an hour
    ahead of w1's, does not take a job started a moment ago for one past its deadline (forced answers at once)."""
    job = await crash_before_the_last_step(client, store, start_worker, {**JOB, "deadline_s": 600})
    ahead = time.time() + 3600
    monkeypatch.setattr(runner.time, "time", lambda: ahead)
    second = ScriptedBackend(researcher)
    start_worker(second, "w2")
    done = await status_is(client, job["id"], "done", "partial", "failed")
    assert done["status"] == "done" and not any(r.forced for r in second.requests)
    assert {step_of(r) for r in second.requests if r.trajectory >= 0} == {2}


async def test_workers_stopped_on_purpose_do_not_use_up_a_jobs_attempts(client, store, start_worker):
    """A worker stopped with SIGTERM (a rolling update) is not one the job killed: its job is resumed however many
    workers are stopped under it, and only runs that die count towards giving it up."""
    job = None
    for n in range(runner.MAX_ATTEMPTS):
        backend = ScriptedBackend(researcher, gate=asyncio.Event())  # held: the job is mid-run when its worker stops
        worker = start_worker(backend, f"w{n}")
        job = job or (await client.post("/v1/jobs", json=JOB)).json()
        await wait_for(lambda backend=backend: asyncio.sleep(0, result=bool(backend.requests)))
        await worker.close()
    start_worker(ScriptedBackend(researcher), "last")
    done = await status_is(client, job["id"], "done", "partial", "failed")
    assert done["status"] == "done", done["error"]


async def test_a_job_given_up_after_its_workers_died_is_charged_what_they_spent(client, store, start_worker):
    """The steps the dead workers ran are in the checkpoints: the tenant pays for them when the job is given up,
    as its grant is given back (else a job that kills its workers would spend for free)."""
    job = await crash_before_the_last_step(client, store, start_worker)
    saved = await store.jobs.load_checkpoints(job["id"], 3)
    spent = sum(c["usage"]["prompt_tokens"] + c["usage"]["completion_tokens"] for c in saved.values())
    await store.jobs.update(job["id"], attempts=3)  # as if every worker that took it had died
    start_worker(ScriptedBackend(researcher), "w2")
    failed = await status_is(client, job["id"], "done", "partial", "failed")
    assert failed["status"] == "failed" and "gave up" in failed["error"]
    tenant = await store.tenants.get("acme")
    assert spent > 0 and (failed["tokens"], tenant.tokens_used, tenant.tokens_reserved) == (spent, spent, 0)


async def test_a_job_whose_trajectories_all_failed_is_charged_what_their_servers_did(client, store, start_worker):
    """Each trajectory's request fails once its server has worked (a reply whose tool call would not parse): the
    failed job and its tenant are charged what the backends counted, as a finished job would be."""
    def unreadable(request):
        raise LLMError("runtime: malformed tool call")
    counted = Usage(prompt_tokens=100, completion_tokens=60)
    start_worker(ScriptedBackend(unreadable, in_flight=lambda request: counted))
    job = (await client.post("/v1/jobs", json=JOB)).json()
    failed = await status_is(client, job["id"], "done", "partial", "failed")
    assert failed["status"] == "failed" and "AllTrajectoriesFailed" in failed["error"]
    tenant = await store.tenants.get("acme")
    assert (failed["tokens"], tenant.tokens_used) == (3 * counted.total_tokens,) * 2


async def test_a_job_whose_aggregation_crashed_is_charged_what_every_backend_counted(client, store, start_worker):
    """Trajectory 0's second request fails once its server worked, the aggregator's claim checks too, and then its
    report pass crashes (a bug): none of these is a step event, and the failed job is charged them all."""
    counted = Usage(prompt_tokens=100, completion_tokens=60)

    def fails(request) -> bool:
        return request.trajectory < 0 or (request.trajectory == 0 and step_of(request) == 1)

    def script(request):
        if request.request_id == REPORT_REQUEST:
            raise RuntimeError("the aggregator broke")
        if fails(request):
            raise LLMError("runtime: malformed tool call")
        return researcher(request)
    backend = ScriptedBackend(script, in_flight=lambda request: counted if fails(request) else Usage())
    start_worker(backend)
    job = (await client.post("/v1/jobs", json=JOB)).json()
    failed = await status_is(client, job["id"], "done", "partial", "failed")
    assert failed["status"] == "failed" and "the aggregator broke" in failed["error"]
    failures = sum(map(fails, backend.requests))
    spent = (len(backend.requests) - failures) * STEP_USAGE.total_tokens + failures * counted.total_tokens
    tenant = await store.tenants.get("acme")
    assert (failed["tokens"], tenant.tokens_used) == (spent, spent)


async def test_a_job_never_spends_more_than_its_tenant_has_left(client, store, start_worker):
    def searcher(request):  # never answers: only budgets end it
        if request.trajectory < 0:
            return researcher(request)
        return call("search", query=f"options {step_of(request)}")
    await store.tenants.set_limits("acme", max_tokens=700)
    start_worker(ScriptedBackend(searcher))
    job = (await client.post("/v1/jobs", json={**JOB, "max_steps": 30})).json()
    done = await status_is(client, job["id"], "done", "partial", "failed")
    assert done["status"] == "partial" and done["stop_reason"] == "job_tokens"
    tenant = await store.tenants.get("acme")  # the job spent within its grant, all the tenant had
    assert tenant.tokens_used == done["tokens"] <= 700 and tenant.tokens_reserved == 0


async def test_the_report_settings_reach_the_workers_aggregator(store):
    settings = WORKER_SETTINGS.model_copy(update={"report_tokens": 200, "report_sources": 3})
    worker = Worker(store, ScriptedBackend(lambda request: call("search", query="x")), None, settings, name="w")
    assert (worker.aggregation.report_tokens, worker.aggregation.report_sources) == (200, 3)
