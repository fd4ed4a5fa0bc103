"""Cancelling a worker: a cancel that Python 3.11's asyncio.wait_for loses inside a Redis command (redis-py sends
every command through it) still stops the worker, rather than leaving it claiming for ever; and a worker's stop
stops its jobs' trajectories where they are, a Redis command included (tests/heavy/held_sends.py)."""

import asyncio

import pytest

from heavy.worker import Worker
from tests.heavy.fakes import ScriptedBackend
from tests.heavy.held_sends import hold_send_until_cancelled
from tests.heavy.worker_helpers import WORKER_SETTINGS, executor, researcher, submit_job

pytestmark = pytest.mark.anyio


async def test_a_cancel_lost_in_a_redis_commands_wait_for_still_stops_the_worker(store):
    claim_new, sent, sending = store.queue.claim_new, asyncio.Event(), asyncio.get_running_loop().create_future()

    async def claim_new_losing_a_cancel(*args, **kwargs):
        """The real claim, its command's send awaited as redis-py awaits it (asyncio.wait_for, its socket_timeout)."""
        if not sent.is_set():
            sent.set()
            await asyncio.wait_for(sending, 5)
        return await claim_new(*args, **kwargs)

    store.queue.claim_new = claim_new_losing_a_cancel
    worker = asyncio.create_task(Worker(store, ScriptedBackend(researcher), executor(), WORKER_SETTINGS,
                                        name="w").run(asyncio.Event()))
    await sent.wait()
    # the send completes and the cancel arrives in the same loop round: 3.11's wait_for returns the reply
    sending.set_result(None)
    worker.cancel()
    done, _ = await asyncio.wait([worker], timeout=10)
    if not done:  # let the test end: the worker still takes a second cancel
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
    assert done and worker.cancelled()


async def test_a_worker_stopping_as_a_trajectory_saves_its_checkpoint_stops_the_trajectory_there(store, monkeypatch):
    """The stop (SIGTERM) cancels the job's trajectories; one cancelled as its checkpoint's save is sent asks the
    model nothing more (it ran its remaining steps, delaying the worker's exit, when the cancel was lost)."""
    job_id = await submit_job(store)
    checkpoint = store.jobs.keys.checkpoint(job_id, 0).encode()
    held = hold_send_until_cancelled(monkeypatch, store.redis, b"EVALSHA", checkpoint)  # its save's script
    backend, stop = ScriptedBackend(researcher), asyncio.Event()
    worker = asyncio.create_task(Worker(store, backend, executor(), WORKER_SETTINGS, name="w").run(stop))
    await held.wait()
    asked = [request.request_id for request in backend.requests if request.trajectory == 0]
    stop.set()
    await worker
    assert [request.request_id for request in backend.requests if request.trajectory == 0] == asked
