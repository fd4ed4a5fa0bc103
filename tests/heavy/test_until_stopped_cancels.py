"""until_stopped, which every model request and tool call of a trajectory goes through, keeps a cancel of its caller
whenever it arrives: also while it waits for the work or the watcher it left to end (a cancel it used to swallow
there: a trajectory cancelled by its worker's stop then asked the model for its next step)."""

import asyncio

import pytest

from heavy.agent import StopSignal
from heavy.agent.budget import until_stopped

pytestmark = pytest.mark.anyio
LOOP_ROUNDS = 12  # until_stopped's whole course, done work to its return, takes fewer loop rounds than this


async def done_at_once() -> str:
    return "done"


@pytest.mark.parametrize("rounds", range(1, LOOP_ROUNDS))  # from its start
async def test_a_caller_cancelled_at_any_loop_round_of_until_stopped_is_cancelled(rounds):
    """A cancel sent after `rounds` loop rounds: the caller ends cancelled, or had returned before it was sent."""
    caller = asyncio.create_task(until_stopped(done_at_once(), StopSignal()))
    for _ in range(rounds):
        await asyncio.sleep(0)
    sent = caller.cancel()  # False: it had returned already
    await asyncio.gather(caller, return_exceptions=True)
    assert caller.cancelled() == sent
