"""Cancelling a worker: a cancel that Python 3.11's asyncio.wait_for loses inside a Redis command (redis-py sends
every command through it) still stops the worker, rather than leaving it claiming for ever."""

import asyncio

import pytest

from heavy.worker import Worker
from tests.heavy.fakes import ScriptedBackend
from tests.heavy.worker_helpers import WORKER_SETTINGS, executor, researcher

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
