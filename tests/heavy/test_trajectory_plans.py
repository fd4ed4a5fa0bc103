"""A plan ("To answer this, I'll search ...") or a tool result the model imagined is no answer (seen with the 1.5B
model, whose steps often end before the answer and which writes `<tool_response>` blocks itself)."""

import pytest

from heavy.agent import TrajectoryLimits, prompts
from heavy.agent.steps import answer_line, says_a_plan, without_result_headers
from tests.heavy.fakes import call, text
from tests.heavy.test_trajectory import by_step, make

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(("answer", "plan"), [
    ("To determine the year Guns N' Roses performed a promo, we need to look at the results for End of Days", True),
    ("To find the screenwriter who co-wrote Evolution, I'll look at the results:", True),
    ("To call the `answer` tool, follow these steps:", True),
    ("Let me look at the results.", True),
    ("I'll search for the woman who portrayed Corliss Archer.", True),
    ("To Kill a Mockingbird", False),  # titles that start like a plan
    ("Let's Dance", False),
    ("I Will Survive", False),
    ("To the Lighthouse, by Virginia Woolf", False),
    ("To find it, the answer is 1889", False),  # a plan's opening, then the answer
    ("1889", False),
])
def test_a_plan_is_told_apart_from_an_answer(answer, plan):
    assert says_a_plan(answer) is plan


def test_what_follows_a_tool_result_tag_the_model_wrote_is_not_its_answer():
    assert answer_line("<tool_response>\nResults for 'David Weissman':\n[1] David Weissman") == ""
    assert answer_line("1889\n<tool_response>\nResults for 'Eiffel'") == "1889"
    assert answer_line("Paris<|im_start|>user\nthanks") == "Paris"
    assert without_result_headers("<tool_response>\n[1] Eiffel\nURL: http://c/1\nFinished in 1889.") == ""


async def test_an_answer_call_holding_only_an_imagined_tool_result_is_asked_again():
    imagined = "<tool_response>\nResults for 'eiffel':\n[1] Eiffel\nURL: http://corpus/eiffel\nFinished in 1889."
    trajectory, backend, _, _ = make(by_step(call("search", query="eiffel"), call("answer", answer=imagined),
                                             call("answer", answer="1889")))
    result = await trajectory.run()
    assert (result.answer, result.stop_reason) == ("1889", "answered")
    told = [m["content"] for m in backend.requests[-1].messages if m["role"] == "tool"]
    assert prompts.ANSWER_UNSAID in told


async def test_a_plan_sent_as_the_answer_is_asked_again_and_never_kept_as_the_best_guess():
    plan = "To determine when the tower was finished, I will look at the results."
    trajectory, backend, _, _ = make(by_step(call("search", query="eiffel"), text(plan),
                                             text("<tool_response>\nResults for 'eiffel'"), call("answer", answer=plan),
                                             call("answer", answer="1889")))
    result = await trajectory.run()
    assert (result.answer, result.stop_reason) == ("1889", "answered")
    told = [m["content"] for m in backend.requests[-1].messages if m["role"] == "tool"]
    assert prompts.ANSWER_UNSAID in told  # the plan was sent back as an answer not yet given


async def test_a_forced_answer_that_is_a_plan_leaves_no_answer_rather_than_the_plan():
    plan = "To answer the question, we need to look at the search results."
    trajectory, _, _, _ = make(by_step(call("search", query="eiffel"), text(plan), forced=text(plan)),
                               limits=TrajectoryLimits(max_steps=3))
    result = await trajectory.run()
    assert result.stop_reason == "max_steps" and result.answer == "" and not result.answered


async def test_our_feedback_copied_back_in_a_text_step_is_never_kept_as_the_best_guess():
    # step 2's plain text earns the nudge to call `answer`; step 3 copies part of it back
    copied = prompts.NUDGE_CALL_ANSWER.split(";")[-1]  # " otherwise search again."
    trajectory, _, _, _ = make(by_step(call("search", query="eiffel"), text("Let me look at the results."),
                                       text(copied), forced=text(copied)), limits=TrajectoryLimits(max_steps=3))
    result = await trajectory.run()
    assert result.stop_reason == "max_steps" and result.answer == "" and not result.answered
