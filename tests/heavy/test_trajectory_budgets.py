"""Token budgets and the context window hold whatever the backend counts: a server that omits usage, a tokenizer that
counts more than the estimate, trajectories sharing a job's budget."""

import json
from dataclasses import replace

import pytest

from heavy.agent import TrajectoryLimits
from heavy.agent.budget import JobTokenBudget
from heavy.agent.context import estimate_tokens
from heavy.llm.openai_backend import OpenAIBackend
from heavy.llm.types import LLMError, Usage
from tests.heavy.fakes import call, text
from tests.heavy.test_llm_openai_context import FAST_RETRY, REFUSALS, strict_server
from tests.heavy.test_trajectory import make

pytestmark = pytest.mark.anyio


def searching_without_usage(request):
    """A model that searches a new query every step, behind a server that reports no usage (all zeros)."""
    if request.forced:
        return text("1889", usage=Usage())
    return replace(call("search", query=f"eiffel {len(request.messages)}"), usage=Usage())


async def test_a_server_that_omits_usage_still_spends_the_trajectory_token_budget():
    limits = TrajectoryLimits(max_steps=30, step_tokens=50, total_tokens=3000, no_progress_steps=30)
    trajectory, backend, _, _ = make(searching_without_usage, limits=limits)
    result = await trajectory.run()
    assert result.stop_reason == "tokens" and len(result.steps) < 30
    assert 0 < result.usage.total_tokens <= limits.total_tokens
    assert all(step.usage.prompt_tokens > 0 for step in result.steps)


async def test_a_server_that_omits_usage_still_spends_the_job_token_budget():
    budget = JobTokenBudget(2000)
    limits = TrajectoryLimits(max_steps=30, no_progress_steps=30)
    trajectory, _, _, _ = make(searching_without_usage, limits=limits, budget=budget)
    result = await trajectory.run()
    # the step that would not fit the grant is never sent: what was spent is what the estimate counted
    assert result.stop_reason == "job_tokens" and 0 < budget.used == result.usage.total_tokens <= budget.total


async def test_the_context_is_fitted_by_what_the_server_counted_when_it_counts_more_than_the_estimate():
    # Chinese pages: the embedded model's tokenizer counts 1.9 times the estimate; this server counts 3 times it and
    # refuses a prompt that does not fit, as an engine does
    limits = TrajectoryLimits(max_steps=6, step_tokens=100, context_tokens=4000, no_progress_steps=6)

    def server(request):
        counted = 3 * estimate_tokens(request.messages, request.tools)
        if counted + request.max_tokens > limits.context_tokens:
            raise LLMError(f"prompt of {counted} tokens is too long")
        step = len(backend.requests)
        reply = text("1889") if request.forced or step == 5 else call("search", query=f"eiffel {step}")
        return replace(reply, usage=Usage(prompt_tokens=counted, completion_tokens=10))

    pages = {f"http://corpus/{i}": f"eiffel {i} " + "埃菲尔铁塔位于巴黎。" * 60 for i in range(6)}
    trajectory, backend, search, _ = make(server, limits=limits)
    search.pages = pages
    result = await trajectory.run()
    assert result.stop_reason != "error" and len(result.steps) == 6


def leaving_none(context, prompt, completion):
    """`runtime serve`'s (and OpenAI's) words for a prompt that alone fills the context; vLLM's for a prompt that
    leaves too little room."""
    if prompt < context:
        return REFUSALS["vllm 0.10"](context, prompt, completion)
    return (f"This model's maximum context length is {context} tokens. However, your messages resulted in {prompt} "
            "tokens, leaving none for the completion. Please reduce the length of the messages.")


def answering_1889(counted):
    """A server's reply to `body`: an `answer` call saying 1889, its prompt counted by `counted`."""
    def reply(body):
        call_ = {"id": "c1", "type": "function", "function": {"name": "answer", "arguments": '{"answer": "1889"}'}}
        message = {"role": "assistant", "content": "", "tool_calls": [call_]}
        answer = {"choices": [{"message": message, "finish_reason": "tool_calls"}],
                  "usage": {"prompt_tokens": counted(body), "completion_tokens": 10}}
        return "application/json", json.dumps(answer).encode()
    return reply


@pytest.mark.parametrize("refusal", [REFUSALS["vllm 0.10"], leaving_none])
async def test_a_first_step_whose_opening_results_overflow_is_fitted_again_by_what_the_server_counted(refusal):
    # Chinese opening results, a server counting 3 times the estimate, and no reply yet to calibrate it: the first
    # prompt overflows the server's context (a 400 stating the prompt's tokens), and is fitted again by them
    limits = TrajectoryLimits(max_steps=2, step_tokens=100, context_tokens=4000)

    def counted(body):
        return 3 * estimate_tokens(body["messages"], body.get("tools"))

    async with strict_server(refusal, counted, context=limits.context_tokens,
                             reply=answering_1889(counted)) as (url, bodies):
        llm = OpenAIBackend(url, "m", retry=FAST_RETRY)
        trajectory, _, search, _ = make(None, limits=limits, opening_search=True, backend=llm)
        search.pages = {f"http://corpus/{i}": f"eiffel {i} " + "埃菲尔铁塔位于巴黎。" * 150 for i in range(4)}
        try:
            result = await trajectory.run()
        finally:
            await llm.aclose()
    assert result.stop_reason == "answered" and result.answer == "1889"
    assert counted(bodies[0]) > limits.context_tokens >= counted(bodies[1]) + bodies[1]["max_tokens"]


async def test_a_server_context_leaving_too_little_room_is_fitted_to_not_cut_into_the_reply():
    # a server whose context (unreported, as OpenAI's) is smaller than HEAVY_CONTEXT_TOKENS, counting English as
    # tokens of 4 characters, not the estimate's 3: the first prompt fits the server, but with room for under half
    # the reply. The backend does not cut the reply to that room; the trajectory fits its prompt to the context the
    # refusal states, and asks for the whole reply
    limits = TrajectoryLimits(max_steps=2, step_tokens=2000, context_tokens=8000)
    server_context = 2950  # the first prompt (the opening search's results, cut by the tool) counts 2441

    def counted(body):
        return estimate_tokens(body["messages"], body.get("tools")) * 3 // 4

    async with strict_server(REFUSALS["vllm 0.10"], counted, context=server_context,
                             reply=answering_1889(counted)) as (url, bodies):
        llm = OpenAIBackend(url, "m", retry=FAST_RETRY)
        trajectory, _, search, _ = make(None, limits=limits, opening_search=True, backend=llm)
        search.pages = {"http://corpus/0": "eiffel tower " + "The tower was finished in 1889. " * 2000}
        try:
            result = await trajectory.run()
        finally:
            await llm.aclose()
    assert result.stop_reason == "answered" and result.answer == "1889"
    assert 0 < server_context - counted(bodies[0]) < limits.step_tokens / 2  # the room the first ask found
    assert [b["max_tokens"] for b in bodies] == [limits.step_tokens] * 2
    assert counted(bodies[1]) + bodies[1]["max_tokens"] <= server_context
