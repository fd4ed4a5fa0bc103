"""An answer written as a JSON number is an answer: "How many ...?" is often answered {"answer": 42}."""

import pytest

from heavy.agent import TrajectoryLimits
from tests.heavy.fakes import call, text
from tests.heavy.test_trajectory import by_step, make

pytestmark = pytest.mark.anyio
QUESTION = "How many years after 1887 was the Eiffel Tower finished?"


async def test_a_forced_answer_written_as_an_answer_call_with_a_number_is_read():
    forced = text('{"name": "answer", "arguments": {"answer": 2, "confidence": 0.9}}')
    trajectory, _, _, _ = make(by_step(call("search", query="eiffel tower"), forced=forced), question=QUESTION,
                               limits=TrajectoryLimits(max_steps=2))
    result = await trajectory.run()
    assert (result.stop_reason, result.answer) == ("max_steps", "2")


async def test_an_answer_call_whose_answer_is_zero_is_taken():
    trajectory, _, _, _ = make(by_step(call("search", query="eiffel tower"), call("answer", answer=0)),
                               question="How many times was the Eiffel Tower moved?")
    result = await trajectory.run()
    assert (result.stop_reason, result.answer) == ("answered", "0")
