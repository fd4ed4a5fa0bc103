"""The scheduler with a scripted backend: early stop, job token budget, straggler cut-off, finish now, cancel."""

import asyncio
from collections import Counter

import pytest

from heavy.agent import TrajectoryLimits
from heavy.agent.context import estimate_tokens
from heavy.aggregate import AggregationConfig
from heavy.events import Aggregating, JobCancelled, JobFailed, MemorySink, ReportReady, TrajectoryDone
from heavy.llm.types import ContextLengthError, LLMError
from heavy.scheduler import AllTrajectoriesFailed, JobControl, JobSpec, Scheduler
from heavy.tools.base import ToolExecutor, ToolLimits
from tests.heavy.fakes import DictOpen, DictSearch, ScriptedBackend, call, text

pytestmark = pytest.mark.anyio

PAGES = {"http://corpus/paris": "Paris is the capital of France.",
         "http://corpus/lyon": "Lyon is a large city in France."}
ANSWERS = ["Paris", "paris.", "The Paris", "Lyon", "Paris", "Lyon", "Paris", "Marseille"]


def researcher(answers=ANSWERS):
    """Trajectory k searches once, then answers answers[k] citing the page it found."""
    def script(request):
        if request.trajectory < 0:  # the aggregator's report pass
            return text("France's capital is Paris [1]. Some said Lyon [2].")
        if request.forced:
            return text(answers[request.trajectory])
        step = int(request.request_id.split(":")[2])
        if step == 0:
            return call("search", query="capital of france")
        return call("answer", answer=answers[request.trajectory], confidence=0.8)
    return script


def spec(**overrides):
    values = dict(job_id="job-7", question="What is the capital of France?", mode="answer", trajectories=8,
                  allowed_tools=frozenset({"search"}), limits=TrajectoryLimits(max_steps=4), deadline_s=60,
                  early_stop_k=8, opening_search=False)
    values.update(overrides)
    return JobSpec(**values)


async def run(job, backend, control=None, pages=PAGES):
    sink = MemorySink()
    result = await Scheduler(backend, ToolExecutor([DictSearch(pages)])).run(job, sink=sink, control=control)
    return result, sink


async def test_eight_trajectories_vote_with_own_sampling_and_the_job_id_as_prefix_key():
    backend = ScriptedBackend(researcher())
    result, sink = await run(spec(), backend)
    assert result.status == "done" and result.stop_reason == "all_done"
    assert result.answer == "Paris" and result.agreement == pytest.approx(5 / 8)
    assert result.votes == {"Paris": 5, "Lyon": 2, "Marseille": 1}
    trajectory_requests = [r for r in backend.requests if r.trajectory >= 0]
    assert {r.prefix_key for r in trajectory_requests} == {"job-7"}
    assert len({(r.sampling.temperature, r.sampling.seed) for r in trajectory_requests}) == 8
    assert len(sink.of_type(TrajectoryDone)) == 8 and len(sink.of_type(ReportReady)) == 1
    data = result.to_dict()
    assert data["tokens"]["total"] == result.usage.total_tokens > 0 and len(data["trajectories"]) == 8


async def test_early_stop_when_k_agree_aborts_the_others():
    slow = {5, 6, 7}
    backend = ScriptedBackend(researcher(["Paris"] * 8), delay_s=lambda r: 30 if r.trajectory in slow else 0)
    result, sink = await run(spec(early_stop_k=3), backend)
    assert result.stop_reason == "early_stop" and result.status == "done" and result.answer == "Paris"
    assert {r.trajectory for r in backend.requests if r.request_id in backend.cancelled} == slow
    stopped = [t for t in result.trajectories if t.stop_reason == "early_stop"]
    assert [t.index for t in stopped] == sorted(slow)
    assert sink.of_type(Aggregating)[0].reason == "early_stop"


async def test_spent_job_token_budget_gives_a_partial_report():
    def script(request):  # everyone keeps searching new words: only the budget ends it
        step = int(request.request_id.split(":")[2]) if request.trajectory >= 0 else 0
        return call("search", query=f"france {step}") if request.trajectory >= 0 else text("Paris [1].")
    backend = ScriptedBackend(script, delay_s=lambda r: 0.01)
    result, _ = await run(spec(mode="report", job_tokens=2000, limits=TrajectoryLimits(max_steps=30)), backend)
    assert result.stop_reason == "job_tokens" and result.status == "partial"
    assert "Partial report (job_tokens)" in result.markdown
    assert sum(t.usage.total_tokens for t in result.trajectories) < 2000 + 8 * 110  # at most one step in flight each


async def test_straggler_cutoff_after_the_deadline_once_enough_are_done():
    backend = ScriptedBackend(researcher(["Paris"] * 8), delay_s=lambda r: 30 if r.trajectory >= 3 else 0)
    result, _ = await run(spec(deadline_s=0.3, straggler_min_done=3, early_stop_k=8), backend)
    assert result.stop_reason == "straggler_cutoff" and result.status == "partial"
    assert [t.stop_reason for t in result.trajectories] == ["answered"] * 3 + ["straggler_cutoff"] * 5
    assert result.answer == "Paris"


async def test_deadline_plus_grace_aggregates_whatever_exists():
    backend = ScriptedBackend(researcher(), delay_s=lambda r: 30 if r.trajectory >= 1 else 0)
    result, _ = await run(spec(deadline_s=0.2, straggler_min_done=5, straggler_grace_s=0.2), backend)
    assert result.stop_reason == "job_deadline" and result.status == "partial" and result.votes == {"Paris": 1}
    assert result.answer  # the lone finished answer, checked by the judge


async def test_finish_now_stops_everything_and_aggregates():
    control = JobControl()
    backend = ScriptedBackend(researcher(), delay_s=lambda r: 30 if r.trajectory >= 2 else 0)
    task = asyncio.create_task(run(spec(mode="report"), backend, control))
    while sum(r.trajectory < 2 for r in backend.requests) < 4:
        await asyncio.sleep(0.01)
    control.finish_now()
    result, _ = await task
    assert result.stop_reason == "finish_now" and result.status == "partial" and result.markdown
    assert len(backend.cancelled) == 6


async def test_cancel_stops_everything_and_writes_no_report():
    control = JobControl()
    backend = ScriptedBackend(researcher(), delay_s=lambda r: 30)
    task = asyncio.create_task(run(spec(), backend, control))
    while len(backend.requests) < 8:
        await asyncio.sleep(0.01)
    control.cancel()
    result, sink = await task
    assert result.status == "cancelled" and result.markdown == "" and result.answer == ""
    assert len(backend.cancelled) == 8
    assert sink.of_type(JobCancelled) and not sink.of_type(ReportReady)
    assert not [r for r in backend.requests if r.trajectory < 0]  # no aggregation call


async def test_cancel_after_finish_now_stops_the_report_pass_too_and_charges_it():
    control = JobControl()
    backend = ScriptedBackend(researcher(), delay_s=lambda r: 30 if r.trajectory < 0 or r.trajectory >= 2 else 0)
    task = asyncio.create_task(run(spec(mode="report"), backend, control))
    while sum(r.trajectory < 2 for r in backend.requests) < 4:
        await asyncio.sleep(0.01)
    control.finish_now()
    while not [r for r in backend.requests if r.trajectory < 0]:  # aggregating: the report pass waits
        await asyncio.sleep(0.01)
    control.cancel()
    result, sink = await task
    assert result.status == "cancelled" and result.markdown == ""
    assert sink.of_type(Aggregating) and sink.of_type(JobCancelled) and not sink.of_type(ReportReady)
    assert [r.request_id for r in backend.requests if r.trajectory < 0] == backend.cancelled[-1:]
    # what the aborted report pass did is charged (the scripted backend's prompt, by the estimate)
    report_pass = next(r for r in backend.requests if r.trajectory < 0)
    trajectories = sum(t.usage.total_tokens for t in result.trajectories)
    assert result.usage.total_tokens == trajectories + estimate_tokens(report_pass.messages, report_pass.tools)


@pytest.mark.parametrize("failure", [RuntimeError, LLMError])  # a bug; an endpoint's refusal (HTTP 401)
async def test_a_crashing_trajectory_does_not_sink_the_job(failure):
    base = researcher(["Paris"] * 8)

    def script(request):
        if request.trajectory == 3:
            raise failure("backend bug")
        return base(request)
    result, sink = await run(spec(), ScriptedBackend(script))
    crashed = result.trajectories[3]
    assert crashed.stop_reason == "error" and "backend bug" in crashed.error
    assert result.answer == "Paris" and result.votes == {"Paris": 7}
    # the job's events say why (a refusing or unreachable endpoint was on none while other trajectories answered)
    errors = {event.trajectory: event.error for event in sink.of_type(TrajectoryDone)}
    assert "backend bug" in errors.pop(3) and set(errors.values()) == {""}


async def test_a_crashed_trajectory_keeps_its_evidence_and_best_guess_for_the_aggregator():
    base = researcher(["Paris"] * 8)

    def script(request):
        if request.trajectory != 3 or request.forced:
            return base(request)
        step = int(request.request_id.split(":")[2])
        if step == 1:  # a guess in words, then a crash
            return text("Paris")
        if step == 2:
            raise RuntimeError("backend bug")
        return base(request)
    result, _ = await run(spec(), ScriptedBackend(script))
    crashed = result.trajectories[3]
    assert crashed.stop_reason == "error" and "backend bug" in crashed.error
    assert crashed.answer == "Paris" and len(crashed.steps) == 2
    assert [s.url for s in crashed.evidence] == ["http://corpus/paris"]
    assert result.votes == {"Paris": 8}


async def test_a_job_whose_every_trajectory_failed_fails_instead_of_reporting_nothing():
    def script(request):
        raise RuntimeError("model endpoint down")
    sink = MemorySink()
    scheduler = Scheduler(ScriptedBackend(script), ToolExecutor([DictSearch(PAGES)]))
    with pytest.raises(AllTrajectoriesFailed, match="all 8 trajectories failed.*model endpoint down"):
        await scheduler.run(spec(), sink=sink)
    assert sink.of_type(JobFailed) and not sink.of_type(ReportReady)


def test_spec_validation_and_sampling_spread():
    with pytest.raises(ValueError, match="trajectories"):
        spec(trajectories=9)
    with pytest.raises(ValueError, match="mode"):
        spec(mode="essay")
    job = spec(temperature_min=0.2, temperature_max=1.0, seed=10)
    assert [job.sampling(k).temperature for k in (0, 7)] == [0.2, 1.0]
    assert [job.sampling(k).seed for k in range(8)] == list(range(10, 18))


async def test_trajectories_after_the_first_also_open_on_a_named_part_of_the_question():
    search = DictSearch(PAGES)
    job = spec(question="Is Lyon larger than Paris?", trajectories=3, opening_search=True)
    await Scheduler(ScriptedBackend(researcher()), ToolExecutor([search])).run(job, sink=MemorySink())
    # all three search the question; trajectories 1 and 2 then one named part each (then the script answers)
    assert Counter(search.queries) == {job.question: 3, "Lyon": 1, "Paris": 1}
    plain = DictSearch(PAGES)
    await Scheduler(ScriptedBackend(researcher()), ToolExecutor([plain])).run(
        spec(question=job.question, trajectories=3, opening_search=True, focus_searches=False), sink=MemorySink())
    assert not {"Lyon", "Paris"} & set(plain.queries)


async def test_a_jobs_tool_call_caps_grow_with_its_trajectories():
    search = DictSearch(PAGES)  # a cap of 2 searches per trajectory: 3 trajectories make their 5 opening searches
    executor = ToolExecutor([search], ToolLimits(call_caps={"search": 2}))
    job = spec(question="Is Lyon larger than Paris?", trajectories=3, opening_search=True)
    await Scheduler(ScriptedBackend(researcher()), executor).run(job, sink=MemorySink())
    assert Counter(search.queries) == {job.question: 3, "Lyon": 1, "Paris": 1}


async def test_the_report_pass_is_fitted_to_the_context_a_refusal_showed_the_trajectories():
    """A server whose context (unreported, as OpenAI's) is smaller than HEAVY_CONTEXT_TOKENS refuses a prompt that
    leaves under half the reply's room (the openai backend cuts a larger room: llm/openai_backend.py). The
    trajectories fit their prompts to the context the refusal states; the report pass, fitted to
    HEAVY_CONTEXT_TOKENS, was refused and the report went without its findings."""
    served = 2000
    pages = {f"http://corpus/{i}": " ".join(f"Paris is the capital of France, page {i} says in line {j}."
                                            for j in range(150)) for i in range(2)}

    def script(request):
        prompt = estimate_tokens(request.messages, request.tools)
        if prompt + request.max_tokens > served and served - prompt < request.max_tokens / 2:
            raise ContextLengthError("too long", prompt_tokens=prompt, room=served - prompt)
        if request.trajectory < 0:
            return text("France's capital is Paris [1].")
        step = int(request.request_id.split(":")[2])
        if request.forced or step > 1:
            return call("answer", answer="Paris", confidence=0.8)
        return call("open_page", url=f"http://corpus/{request.trajectory}") if step else call("search", query="paris")
    backend = ScriptedBackend(script)
    scheduler = Scheduler(backend, ToolExecutor([DictSearch(pages), DictOpen(pages)]),
                          aggregation=AggregationConfig(source_excerpt_chars=1500))
    result = await scheduler.run(spec(mode="report", trajectories=2, allowed_tools=frozenset({"search", "open_page"}),
                                      limits=TrajectoryLimits(max_steps=4, step_tokens=200)))
    refused = [r for r in backend.requests if estimate_tokens(r.messages, r.tools) + r.max_tokens > served]
    assert {r.request_id for r in refused} == {"job-7:0:1", "job-7:1:1"}  # the pages' text, before the refit
    assert "## Findings\n\nFrance's capital is Paris [1]." in result.markdown
