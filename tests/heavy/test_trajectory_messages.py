"""The conversation a trajectory sends stays one an OpenAI-compatible server accepts, whatever the model wrote."""

import pytest

from heavy.agent import TrajectoryLimits
from heavy.llm.types import Completion, ToolCall
from tests.heavy.fakes import STEP_USAGE, call
from tests.heavy.test_trajectory import by_step, make

pytestmark = pytest.mark.anyio


def unanswered_calls(messages: list[dict]) -> list[str]:
    """Ids of assistant tool calls no tool message answers: OpenAI and Moonshot refuse such a request (400)."""
    answered = {m["tool_call_id"] for m in messages if m["role"] == "tool"}
    return [c["id"] for m in messages if m["role"] == "assistant" for c in m.get("tool_calls") or ()
            if c["id"] not in answered]


async def test_calls_after_a_sent_back_answer_in_the_same_reply_leave_no_call_unanswered():
    # an answer with no evidence yet is sent back, and the search the model wrote after it is never run: it must not
    # stay in the conversation as a call without a result
    answer_then_search = Completion(
        content="", finish_reason="tool_calls", usage=STEP_USAGE,
        tool_calls=(ToolCall(id="c_an", name="answer", arguments={"answer": "1887"}),
                    ToolCall(id="c_se", name="search", arguments={"query": "eiffel"})))
    trajectory, backend, _, _ = make(by_step(answer_then_search, call("search", query="eiffel tower"),
                                             call("answer", answer="1889")),
                                     limits=TrajectoryLimits(max_steps=4))
    result = await trajectory.run()
    assert result.answer == "1889"
    assert [unanswered_calls(r.messages) for r in backend.requests] == [[]] * len(backend.requests)
