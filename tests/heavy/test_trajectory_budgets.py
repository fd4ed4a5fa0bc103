"""Token budgets hold whatever the backend reports: a server that omits usage, trajectories sharing a job's budget."""

from dataclasses import replace

import pytest

from heavy.agent import TrajectoryLimits
from heavy.agent.budget import JobTokenBudget
from heavy.llm.types import Usage
from tests.heavy.fakes import call, text
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
    assert result.stop_reason == "job_tokens" and budget.used >= 2000
