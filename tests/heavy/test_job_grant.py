"""A job never spends more than its token grant: the trajectories stop at their share of it, and the aggregator's
calls (report pass, judge, shortening, claim checks) spend only what is left, the report still written."""

import asyncio
import contextlib
import dataclasses

import pytest

from heavy.agent import JobTokenBudget, Trajectory, TrajectoryLimits, TrajectorySpec
from heavy.agent.budget import GrantedBackend
from heavy.agent.context import estimate_tokens
from heavy.aggregate import REPORT_REQUEST
from heavy.llm.types import LLMError, Sampling, Usage
from heavy.tools.base import ToolExecutor
from tests.heavy.fakes import DictSearch, ScriptedBackend, call, text
from tests.heavy.test_scheduler import run, spec

pytestmark = pytest.mark.anyio

ANSWERS = ["Paris", "Lyon", "Marseille", "Nice", "Paris", "Lyon", "Lille", "Nantes"]  # no majority: the judge reads


def spending_all_it_may(script):
    """Every request spends all it may: its whole prompt estimate and every completion token it was given."""
    def spend(request):
        reply = script(request)
        return dataclasses.replace(reply, usage=Usage(estimate_tokens(request.messages, request.tools),
                                                      request.max_tokens))
    return spend


def researching(request):
    """Each trajectory searches twice and answers, citing nothing; the aggregator writes a report, judges, checks."""
    if request.trajectory < 0:
        return text("Paris is the capital of France [1]. Lyon is a large city in France [2].")
    if request.forced:
        return text(ANSWERS[request.trajectory])
    step = int(request.request_id.split(":")[2])
    if step < 2:
        return call("search", query=["capital of france", "large city in france"][step])
    return call("answer", answer=ANSWERS[request.trajectory], confidence=0.8)


@pytest.mark.parametrize("mode", ["report", "answer"])
@pytest.mark.parametrize("grant", [2_000, 9_000, 20_000, 40_000, 200_000])
async def test_a_jobs_charged_tokens_never_pass_its_grant(mode, grant):
    backend = ScriptedBackend(spending_all_it_may(researching))
    result, _ = await run(spec(mode=mode, job_tokens=grant, limits=TrajectoryLimits(max_steps=6)), backend)
    assert result.usage.total_tokens <= grant
    assert result.markdown.startswith("# What is the capital of France?")  # a report, partial or not
    if grant == 200_000:  # room for everything: the aggregator's calls ran
        assert result.status == "done" and any(r.trajectory < 0 for r in backend.requests)


async def test_the_reserve_the_trajectories_leave_is_the_report_passs():
    """The answers' claim checks run before the report pass: they leave it the reserve, then spend what it left."""
    budget = JobTokenBudget(3_000, reserve=1_000)
    budget.charge(1_800)  # the trajectories' share, nearly spent
    backend = ScriptedBackend(spending_all_it_may(lambda request: text("Paris [1].")))
    granted = GrantedBackend(backend, budget, kept_for=REPORT_REQUEST, keep=budget.reserve)
    check = [{"role": "user", "content": "Is it so? " * 100}]  # about 350 tokens with its reply

    async def ask(request_id, messages, max_tokens):
        await granted.chat(messages, None, Sampling(), max_tokens=max_tokens, request_id=request_id)

    with pytest.raises(LLMError):
        await ask("answer-check:0:0", check, 4)
    await ask(REPORT_REQUEST, [{"role": "user", "content": "Sources ... " * 100}], 128)
    await ask("claim-check:0", check, 4)  # what the report pass left
    with pytest.raises(LLMError):
        await ask("claim-check:1", check, 4)
    assert budget.used <= budget.total and budget.held == 0
    assert [r.request_id for r in backend.requests] == [REPORT_REQUEST, "claim-check:0"]


async def test_a_request_short_of_room_waits_for_those_in_flight_and_is_refused_only_when_none_is():
    budget = JobTokenBudget(1_000)
    assert await budget.hold(600)
    waiting = asyncio.ensure_future(budget.hold(600))
    await asyncio.sleep(0)
    assert not waiting.done()  # the first may spend less than it holds
    budget.settle(600, 100)
    assert await waiting and (budget.used, budget.held) == (100, 600)
    last = asyncio.ensure_future(budget.hold(400))
    await asyncio.sleep(0)
    budget.settle(600, 600)  # it spent all it held: 300 left
    assert not await last and budget.exhausted.is_set()


async def test_the_aggregators_calls_spend_the_grant_behind_a_server_that_reports_no_usage():
    """Counted by the estimate, as a trajectory's are: zeros would let every call that fits alone through."""
    budget = JobTokenBudget(1_000)
    granted = GrantedBackend(ScriptedBackend(lambda request: text("Paris.", usage=Usage())), budget)
    check = [{"role": "user", "content": "Is it so? " * 100}]  # about 350 tokens with its reply

    async def ask():
        return await granted.chat(check, None, Sampling(), max_tokens=4, request_id="claim-check:0")

    spent = [(await ask()).usage.total_tokens for _ in range(2)]
    with pytest.raises(LLMError):  # the first two spent what a third would need
        await ask()
    assert all(spent) and budget.used == sum(spent) <= budget.total and budget.held == 0


def counting_chinese_as_the_embedded_tokenizer(script):
    """Every request spends all it may, its prompt counted 1.9 times the estimate (Chinese text, as the embedded
    model's tokenizer counts it)."""
    def spend(request):
        reply = script(request)
        prompt = int(1.9 * estimate_tokens(request.messages, request.tools))
        return dataclasses.replace(reply, usage=Usage(prompt, request.max_tokens))
    return spend


async def test_the_aggregators_calls_are_held_by_what_the_server_counted_for_their_own_text():
    """No trajectory calibrated the job (a server counting its pages' Chinese 1.9 times the estimate): the first call
    does, and the later ones hold that much; held by the estimate, the fourth went through and spent past the grant."""
    budget = JobTokenBudget(2_000)  # three calls spend 1,671: by the estimate, a fourth (298) still fits
    server = ScriptedBackend(counting_chinese_as_the_embedded_tokenizer(lambda request: text("是。")))
    granted = GrantedBackend(server, budget)
    check = [{"role": "user", "content": "埃菲尔铁塔于1889年建成。" * 60}]  # 288 tokens by the estimate, 547 counted
    for i in range(5):
        with contextlib.suppress(LLMError):
            await granted.chat(check, None, Sampling(), max_tokens=10, request_id=f"claim-check:{i}")
    assert 0 < budget.used <= budget.total and budget.held == 0


@pytest.mark.parametrize("mode", ["report", "answer"])
@pytest.mark.parametrize("grant", [3_000, 9_000, 20_000])
async def test_a_jobs_charged_tokens_never_pass_its_grant_over_text_the_estimate_undercounts(mode, grant):
    """The aggregator's first calls are held by the ratio the trajectories' requests showed."""
    backend = ScriptedBackend(counting_chinese_as_the_embedded_tokenizer(researching))
    pages = {"http://corpus/paris": "Paris is the capital of France. " + "巴黎是法国的首都。" * 80,
             "http://corpus/lyon": "Lyon is a large city in France. " + "里昂是法国的大城市。" * 80}
    result, _ = await run(spec(mode=mode, job_tokens=grant, limits=TrajectoryLimits(max_steps=6)), backend,
                          pages=pages)
    assert result.usage.total_tokens <= grant
    assert result.markdown.startswith("# What is the capital of France?")


@pytest.mark.parametrize("known", [1.9, None], ids=["known-to-the-job", "unknown"])
async def test_the_first_steps_of_eight_trajectories_sent_together_never_pass_the_grant(known):
    """A server counting the question's Chinese 1.9 times the estimate; the grant fits the eight first steps by the
    estimate, not by what the server counts. Known to the job (a takeover's checkpoints, another trajectory's reply),
    the ratio holds a trajectory's first step; unknown, the first reply shows it to the others waiting for room. By
    the bare estimate, all eight were held and together spent past the grant."""
    server = ScriptedBackend(counting_chinese_as_the_embedded_tokenizer(
        lambda request: call("search", query=f"埃菲尔铁塔 {request.trajectory}")))
    limits = TrajectoryLimits(max_steps=3, step_tokens=64)
    specs = [TrajectorySpec(job_id="job-zh", index=k, question="埃菲尔铁塔是哪一年建成的？" * 30,
                            allowed_tools=frozenset({"search"}), sampling=Sampling(seed=k), limits=limits,
                            opening_search=False) for k in range(8)]
    executor = ToolExecutor([DictSearch({})])
    first = Trajectory(specs[0], server, executor)
    first_step = estimate_tokens(first.messages, first.tools) + limits.step_tokens
    budget = JobTokenBudget(8 * first_step)
    if known:
        budget.calibrate(known)
    results = await asyncio.gather(*(Trajectory(s, server, executor, job_budget=budget).run() for s in specs))
    assert budget.used <= budget.total and budget.held == 0
    assert budget.used == sum(r.usage.total_tokens for r in results) > 0
