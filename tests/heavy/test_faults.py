"""Worker and API faults, each against real processes: a worker killed with SIGKILL mid-job (another finishes it
from the checkpoints, no event lost or repeated), stopped with SIGTERM mid-job or while aggregating (what it spent is
handed over), killed or stalled past its lease while aggregating (what its answered calls spent is kept), and the API
process killed and restarted while a client follows the events (the client reconnects with Last-Event-ID and misses
nothing). Redis' own faults are in test_faults_redis.py."""

import asyncio
import signal
import subprocess
import sys
from dataclasses import asdict

import httpx
import pytest

from heavy.llm.types import Usage
from heavy.worker import Worker
from tests.heavy.api_helpers import follow_sse
from tests.heavy.fakes import STEP_USAGE, ScriptedBackend
from tests.heavy.service_proc import CUT_USAGE
from tests.heavy.worker_helpers import (
    WORKER_SETTINGS,
    all_events,
    assert_gap_free,
    executor,
    finished,
    researcher,
    spawn,
    stop,
    submit_job,
    wait_api_ready,
    wait_for,
)
from tests.net import free_port

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_worker_sigkill_mid_job_another_worker_finishes_it(store, redis_url, key_prefix):
    doomed = spawn("worker", redis_url, key_prefix, "doomed", "slow")
    rescuer = None
    try:
        job_id = await submit_job(store)

        async def waiting_on_third_steps():  # two steps of every trajectory checkpointed
            saved = await store.jobs.load_checkpoints(job_id, 3)
            return len(saved) == 3 and all(len(c.get("steps", ())) == 2 for c in saved.values())
        await wait_for(waiting_on_third_steps, timeout_s=60)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
        before = await all_events(store, job_id)
        assert (await store.jobs.get(job_id)).status == "running"

        rescuer = spawn("worker", redis_url, key_prefix, "rescuer")
        job, events = await wait_for(lambda: finished(store, job_id), timeout_s=60)
        assert (job.status, job.attempts, job.stops, job.worker) == ("done", 2, 0, "rescuer")  # a death
        assert events[:len(before)] == before  # nothing rewritten
        assert_gap_free(events, trajectories=3)
        assert events[-1]["type"] == "report_ready"
        markdown, result = await store.jobs.get_report(job_id)
        assert [t["steps"] for t in result["trajectories"]] == [3, 3, 3] and "argparse" in markdown
        # charged their replies, each once (the third steps the kill cut are lost with the worker), and the
        # tenant the same
        assert [t["tokens"] for t in result["trajectories"]] == [2 * STEP_USAGE.total_tokens] * 3
        tenant = await store.tenants.get("acme")
        assert job.tokens == result["tokens"]["total"] == tenant.tokens_used and tenant.tokens_reserved == 0

        async def acked():  # the worker acks the queue entry after the job's end: a step behind it
            return await store.queue.pending() == 0
        await wait_for(acked, timeout_s=30)
    finally:
        stop(doomed)
        if rescuer:
            stop(rescuer)


async def test_worker_sigterm_mid_job_exits_at_once_charging_its_cut_requests_and_another_worker_finishes_it(
        store, redis_url, key_prefix):
    # what Kubernetes does to a pod it stops: SIGTERM, then SIGKILL after the grace period
    stopping = subprocess.Popen([sys.executable, "-m", "tests.heavy.service_proc", "worker", redis_url, key_prefix,
                                 "stopping", "slow"], stdout=subprocess.PIPE, text=True)
    rescuer = None
    try:
        job_id = await submit_job(store)
        in_flight = set()
        while len(in_flight) < 3:  # every trajectory's third step sent, its server working on it
            line = await asyncio.to_thread(stopping.stdout.readline)
            assert line, "the worker ended before its third steps"
            in_flight |= {line.split()[-1]} if line.startswith("in flight") else set()
        stopping.send_signal(signal.SIGTERM)
        output, _ = stopping.communicate(timeout=10)  # the third steps wait a minute: they are aborted, not awaited
        assert stopping.returncode == 0 and "worker stopping stopped" in output
        job = await store.jobs.get(job_id)
        assert job.status == "running" and job.worker == "stopping"  # left for another worker, not failed
        before = await all_events(store, job_id)
        # what the server spent on the cut steps is in the checkpoints, on top of the steps they hold
        saved = await store.jobs.load_checkpoints(job_id, 3)
        assert [len(c["steps"]) for c in saved.values()] == [2, 2, 2]
        assert all(c["usage"]["prompt_tokens"] + c["usage"]["completion_tokens"]
                   == STEP_USAGE.total_tokens + CUT_USAGE.total_tokens for c in saved.values())

        rescuer = spawn("worker", redis_url, key_prefix, "rescuer")
        job, events = await wait_for(lambda: finished(store, job_id), timeout_s=60)
        assert (job.status, job.attempts, job.stops, job.worker) == ("done", 2, 1, "rescuer")  # a stop, no death
        assert events[:len(before)] == before
        assert_gap_free(events, trajectories=3)
        _, result = await store.jobs.get_report(job_id)  # two replies each, and the cut step: the job is charged all
        charged = 2 * STEP_USAGE.total_tokens + CUT_USAGE.total_tokens
        assert [t["tokens"] for t in result["trajectories"]] == [charged] * 3
        assert job.tokens == result["tokens"]["total"] > sum(t["tokens"] for t in result["trajectories"])
    finally:
        stop(stopping)
        if rescuer:
            stop(rescuer)


async def test_worker_sigterm_while_aggregating_hands_what_its_aggregation_spent_to_the_worker_that_reruns_it(
        store, redis_url, key_prefix):
    stopping = subprocess.Popen([sys.executable, "-m", "tests.heavy.service_proc", "worker", redis_url, key_prefix,
                                 "stopping", "slow_aggregation"], stdout=subprocess.PIPE, text=True)
    rescuer = None
    try:
        job_id = await submit_job(store)
        line = ""
        while not line.startswith("in flight"):  # the aggregator's first request sent, its server working on it
            line = await asyncio.to_thread(stopping.stdout.readline)
            assert line, "the worker ended before it aggregated"
        stopping.send_signal(signal.SIGTERM)
        output, _ = stopping.communicate(timeout=10)
        assert stopping.returncode == 0 and "worker stopping stopped" in output
        cut = 1 + output.count("in flight")  # the aggregator's requests in flight when it stopped
        job = await store.jobs.get(job_id)
        assert job.status == "aggregating" and job.worker == "stopping"
        # no checkpoint holds what they spent: the job's hash does, for the worker that aggregates again
        assert job.earlier_usage == asdict(sum([CUT_USAGE] * cut, Usage()))

        rescuer = spawn("worker", redis_url, key_prefix, "rescuer")
        job, _ = await wait_for(lambda: finished(store, job_id), timeout_s=60)
        assert (job.status, job.attempts, job.stops) == ("done", 2, 1)
        _, result = await store.jobs.get_report(job_id)
        assert job.tokens == result["tokens"]["total"]
        # the trajectories (checkpointed), the rescuer's aggregation (whole replies) and the stopped one's cut calls
        rescuers_aggregation = (result["tokens"]["total"] - sum(t["tokens"] for t in result["trajectories"])
                                - cut * CUT_USAGE.total_tokens)
        assert rescuers_aggregation > 0 and rescuers_aggregation % STEP_USAGE.total_tokens == 0
    finally:
        stop(stopping)
        if rescuer:
            stop(rescuer)


@pytest.mark.parametrize("fault", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "stalled_past_its_lease"])
async def test_a_worker_killed_or_stalled_while_aggregating_leaves_what_its_answered_calls_spent_to_the_next_worker(
        store, redis_url, key_prefix, fault):
    doomed = subprocess.Popen([sys.executable, "-m", "tests.heavy.service_proc", "worker", redis_url, key_prefix,
                               "doomed", "slow_claim_checks"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    rescuer = None
    try:
        job_id = await submit_job(store)
        line = ""
        while not line.startswith("in flight"):  # the report pass answered, its claim check sent
            line = await asyncio.to_thread(doomed.stdout.readline)
            assert line, "the worker ended before it checked a claim"
        doomed.send_signal(fault)
        job = await store.jobs.get(job_id)
        assert job.status == "aggregating" and job.worker == "doomed"
        # nothing runs at a kill or while stalled: the report pass's spend was kept in the job as it answered (the
        # claim check in flight is lost with the worker)
        assert job.earlier_usage == asdict(STEP_USAGE)

        rescuer = spawn("worker", redis_url, key_prefix, "rescuer")
        job, _ = await wait_for(lambda: finished(store, job_id), timeout_s=60)
        assert (job.status, job.attempts, job.stops) == ("done", 2, 0)  # a death
        if fault == signal.SIGSTOP:  # the stalled worker goes on, sees it lost the job and stops its run, unheard
            doomed.send_signal(signal.SIGCONT)
            while "taken over by another worker" not in line:
                line = await asyncio.to_thread(doomed.stdout.readline)
                assert line, "the stalled worker ended before it saw the job taken over"
            assert await store.jobs.get(job_id) == job
        _, result = await store.jobs.get_report(job_id)
        # the trajectories (checkpointed), the rescuer's report pass and the first worker's
        trajectories = sum(t["tokens"] for t in result["trajectories"])
        assert job.tokens == result["tokens"]["total"] == trajectories + 2 * STEP_USAGE.total_tokens
        tenant = await store.tenants.get("acme")
        assert (tenant.tokens_used, tenant.tokens_reserved) == (job.tokens, 0)
    finally:
        stop(doomed)
        if rescuer:
            stop(rescuer)


async def test_api_restart_mid_job_clients_reconnect_and_lose_no_event(store, redis_url, key_prefix):
    key = await store.tenants.create_key("acme")
    port = free_port()
    api = spawn("api", redis_url, key_prefix, str(port))
    stop_worker = asyncio.Event()
    slow = ScriptedBackend(researcher, delay_s=lambda r: 0.3)
    worker = asyncio.create_task(Worker(store, slow, executor(), WORKER_SETTINGS, name="w").run(stop_worker))
    received: list[dict] = []
    try:
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {key.secret}"}
        await wait_api_ready(base)
        job_id = await submit_job(store)
        url = f"{base}/v1/jobs/{job_id}/events"
        follower = asyncio.create_task(follow_sse(url, headers, received))
        await wait_for(lambda: asyncio.sleep(0, result=len(received) >= 3), timeout_s=30)
        api.send_signal(signal.SIGKILL)
        api.wait()
        with pytest.raises(httpx.HTTPError):
            await follower  # the connection dropped mid-stream
        seen_before_restart = len(received)
        assert not (await store.jobs.get(job_id)).terminal

        api = spawn("api", redis_url, key_prefix, str(port))
        await wait_api_ready(base)
        await follow_sse(url, {**headers, "Last-Event-ID": str(received[-1]["id"])}, received)
        assert received[-1]["type"] == "report_ready" and len(received) > seen_before_restart
        assert [e["id"] for e in received] == list(range(1, len(received) + 1))
        assert_gap_free(received, trajectories=3)
    finally:
        stop(api)
        stop_worker.set()
        await worker
