"""A worker's callbacks go out beside its jobs, not in their slots: a receiver that holds a POST does not keep the
worker's next job waiting, and a worker stopped (SIGTERM) while a callback is out leaves it due, for a sweep."""

import asyncio
import json
import signal

import pytest

from heavy.api.models import JobCreate
from heavy.store import Keys
from heavy.worker import Worker, callbacks
from tests.heavy.fakes import ScriptedBackend
from tests.heavy.test_webhooks import Receiver, settings_allowing
from tests.heavy.worker_helpers import JOB, ended, executor, researcher, spawn, stop, submit_job, wait_for

pytestmark = pytest.mark.anyio


async def settled(store, job_id: str) -> str:
    """The job's callback outcome once it is settled ("pending" or "sending" before)."""
    status = (await store.jobs.get(job_id)).callback_status
    return "" if status in ("pending", "sending") else status


async def test_a_receiver_holding_a_callback_does_not_hold_the_workers_next_job(store):
    """A worker of one job slot sent a job's callback in that job's task: a receiver that never answered kept the
    next queued job waiting for all the callback's tries (46 s by default)."""
    hook = Receiver((None,))  # the first POST is held until the test lets it go (then a 200 on the retry)
    settings = settings_allowing(hook).model_copy(update={"worker_jobs": 1, "webhook_timeout_s": 60.0,
                                                          "webhook_attempts": 2})
    first, _ = await store.jobs.submit("acme", question=JOB["question"], mode="report",
                                       params=JobCreate(**JOB).resolve(settings), callback_url=hook.url)
    second = await submit_job(store)
    halt = asyncio.Event()
    worker = asyncio.create_task(Worker(store, ScriptedBackend(researcher), executor(), settings, name="w").run(halt))
    try:
        await wait_for(lambda: asyncio.sleep(0, result=hook.received))  # the first job's callback is out
        await wait_for(lambda: ended(store, second))
        assert (await store.jobs.get(first.id)).callback_status == "sending"  # still held by the receiver
        hook.closing.set()
        outcome = await wait_for(lambda: settled(store, first.id))
    finally:
        halt.set()
        await worker
        hook.close()
    assert outcome == "delivered: HTTP 200 after 2 attempt(s)"
    assert await store.jobs.due_callbacks() == []


async def test_a_worker_stopped_while_a_callback_is_out_leaves_it_for_a_sweep(store, redis_url, key_prefix):
    hook = Receiver((None,))  # the first POST gets no answer: its worker is stopped while it waits
    settings = settings_allowing(hook).model_copy(update={"webhook_timeout_s": 2.0, "webhook_attempts": 1})
    job, _ = await store.jobs.submit("acme", question=JOB["question"], mode="report", callback_url=hook.url,
                                     params=JobCreate(**JOB).resolve(settings))
    stopped = spawn("worker", redis_url, key_prefix, "stopped",
                    env={"HEAVY_WEBHOOK_ALLOW": json.dumps([hook.allow]), "HEAVY_WEBHOOK_TIMEOUT_S": "60",
                         "HEAVY_WEBHOOK_ATTEMPTS": "1"})
    try:
        await wait_for(lambda: asyncio.sleep(0, result=hook.received), timeout_s=60)
        stopped.send_signal(signal.SIGTERM)  # as Kubernetes stops a pod, its POST waiting for an answer
        assert await asyncio.to_thread(stopped.wait, 30) == 0
    finally:
        stop(stopped)
    assert (await store.jobs.get(job.id)).callback_status == "sending"
    assert await store.redis.zscore(Keys(key_prefix).callbacks, job.id) is not None  # due once its lease ran out
    halt = asyncio.Event()
    rescuer = asyncio.create_task(Worker(store, ScriptedBackend(researcher), executor(), settings, name="r").run(halt))
    try:  # the stopped worker's claim was for 2 x 60 s: the test moves it to now rather than wait
        await store.redis.zadd(Keys(key_prefix).callbacks, {job.id: 0})
        outcome = await wait_for(lambda: settled(store, job.id), timeout_s=30)
    finally:
        halt.set()
        await rescuer
        hook.close()
    assert outcome == "delivered: HTTP 200 after 1 attempt(s)"
    first, second = (json.loads(body) for _, body in hook.received)
    assert first == second and first["job"]["id"] == job.id


async def test_a_delivery_failing_unforeseen_is_logged_about_its_job(store, monkeypatch, caplog):
    """deliver never raises by design; an error it did not foresee showed only as asyncio's "Task exception was never
    retrieved", naming no job."""
    async def broken(jobs, job_id, settings, guard):
        raise RuntimeError("unforeseen")
    monkeypatch.setattr(callbacks, "deliver", broken)
    sender = callbacks.Callbacks(store.jobs, settings_allowing(Receiver(())))
    assert sender.send("job-1")
    await asyncio.gather(*sender.out.values(), return_exceptions=True)
    await asyncio.sleep(0)  # its done callback runs
    (record,) = [r for r in caplog.records if r.name == "heavy.worker.callbacks"]
    assert "job-1" in record.getMessage() and "unforeseen" in record.getMessage() and not sender.out
