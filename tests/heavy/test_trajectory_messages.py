"""The conversation a trajectory sends stays one an OpenAI-compatible server accepts, whatever the model wrote."""

import asyncio

import pytest

from heavy.agent import TrajectoryLimits, prompts
from heavy.llm.types import Completion, ToolCall
from heavy.tools.base import ToolExecutor
from tests.heavy.fakes import STEP_USAGE, DictSearch, call
from tests.heavy.test_trajectory import PAGES, by_step, make

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


class SlowToStopPage:
    """`open_page` that outlives the deadline and, cancelled, takes a moment to clean up (a python run's process
    group is killed and reaped the same way)."""

    name = "open_page"
    description = "Open a page."
    parameters = {"type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"]}

    async def run(self, args, ctx):
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(0.3)
            raise


async def test_the_forced_answer_after_a_deadline_inside_a_tool_call_leaves_no_call_unanswered():
    trajectory, backend, _, _ = make(by_step(call("search", query="eiffel"), call("open_page", url="http://x/slow")),
                                     allowed=("search", "open_page"),
                                     limits=TrajectoryLimits(max_steps=4, deadline_s=0.5, final_answer_timeout_s=5))
    trajectory.executor = ToolExecutor([DictSearch(PAGES), SlowToStopPage()])
    trajectory.tools = trajectory.executor.specs(trajectory.spec.allowed_tools) + [prompts.ANSWER_SPEC]
    result = await trajectory.run()
    assert (result.stop_reason, result.answer) == ("deadline", "1889")
    assert backend.requests[-1].forced and unanswered_calls(backend.requests[-1].messages) == []


@pytest.mark.parametrize("written", [3, 5])
async def test_calls_past_the_per_step_cap_are_reported_as_not_run(written):
    searches = Completion(content="", finish_reason="tool_calls", usage=STEP_USAGE, tool_calls=tuple(
        ToolCall(id=f"c{i}", name="search", arguments={"query": f"eiffel {i}"}) for i in range(written)))
    trajectory, backend, search, _ = make(by_step(searches, call("answer", answer="1889")))
    await trajectory.run()
    told = [m["content"] for m in backend.requests[1].messages if m["role"] == "user"][1:]
    assert len(search.queries) == 3
    assert told == ([] if written == 3 else ["Only 3 tool calls run in one step; your 2 others did not run."])
