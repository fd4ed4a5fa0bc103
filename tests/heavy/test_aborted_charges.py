"""A model request aborted in flight (finish now, cancel, a deadline, a trajectory cut) is charged what its server
did: the tokens its backend counted so far (the runtime engine's own figures), or the prompt by the estimate when it
could count nothing (a non-streamed OpenAI request). Over the scripted backend and the runtime backend's stand-in
engine; the OpenAI backend's meter in test_llm_openai.py."""

import asyncio

import httpx
import pytest

from heavy.agent import TrajectoryLimits
from heavy.agent.budget import GrantedBackend, JobTokenBudget, StopSignal
from heavy.agent.context import estimate_tokens
from heavy.aggregate import REPORT_REQUEST
from heavy.llm.openai_backend import OpenAIBackend
from heavy.llm.retry import RetryPolicy
from heavy.llm.runtime_backend import RuntimeBackend
from heavy.llm.types import ContextLengthError, LLMError, Sampling, Usage
from heavy.scheduler import JobControl, Scheduler
from heavy.tools.base import ToolExecutor
from heavy.worker.checkpoint import CheckpointedTrajectory
from runtime.replica.errors import ReplicaDownError
from tests.heavy.fakes import STEP_USAGE, DictSearch, ScriptedBackend, call
from tests.heavy.test_llm_openai import REPLY
from tests.heavy.test_llm_runtime import Engine, Tokenizer
from tests.heavy.test_scheduler import PAGES, researcher, run, spec
from tests.heavy.test_trajectory import make

pytestmark = pytest.mark.anyio

HANGS = 30  # s: a request that only a stop ends
RETRY_AT_ONCE = RetryPolicy(max_retries=2, backoff_s=0.001, backoff_max_s=0.001)
QUESTION = [{"role": "user", "content": "Is it so?"}]


async def stopped_in_flight(backend, started, budget):
    """A trajectory over `backend` stopped by finish-now once `started()`; its result."""
    stop = StopSignal()
    trajectory, _, _, _ = make(None, backend=backend, stop=stop, budget=budget,
                               limits=TrajectoryLimits(max_steps=3))
    task = asyncio.create_task(trajectory.run())
    while not started():
        await asyncio.sleep(0.01)
    stop.set("finish_now")
    return await task


async def test_a_request_aborted_in_flight_is_charged_what_its_backend_counted():
    backend = ScriptedBackend(lambda request: call("search", query="eiffel"), delay_s=lambda request: HANGS,
                              in_flight=lambda request: Usage(prompt_tokens=100, completion_tokens=7))
    budget = JobTokenBudget(10_000)
    result = await stopped_in_flight(backend, lambda: backend.requests, budget)
    assert result.stop_reason == "finish_now" and backend.cancelled
    assert result.usage == Usage(prompt_tokens=100, completion_tokens=7) and budget.used == 107


async def test_a_request_aborted_before_its_server_said_anything_is_charged_its_prompt_by_the_estimate():
    backend = ScriptedBackend(lambda request: call("search", query="eiffel"), delay_s=lambda request: HANGS)
    budget = JobTokenBudget(10_000)
    result = await stopped_in_flight(backend, lambda: backend.requests, budget)
    request = backend.requests[0]
    assert result.usage == Usage(prompt_tokens=estimate_tokens(request.messages, request.tools)) and result.usage
    assert budget.used == result.usage.total_tokens


async def test_a_runtime_request_aborted_mid_generation_is_charged_the_engines_count():
    engine = Engine(["Let me ", "think"], hang=True)  # two tokens, then it would go on
    budget = JobTokenBudget(10_000)
    result = await stopped_in_flight(RuntimeBackend(engine, Tokenizer()), lambda: engine.calls, budget)
    assert engine.closed  # aborted in the engine
    assert result.usage == Usage(prompt_tokens=40, completion_tokens=2, cached_prompt_tokens=16)
    assert budget.used == 42


async def test_finish_now_charges_the_job_what_the_aborted_steps_spent():
    in_flight = Usage(prompt_tokens=100, completion_tokens=7)
    backend = ScriptedBackend(researcher(), delay_s=lambda r: HANGS if r.trajectory >= 2 else 0,
                              in_flight=lambda r: in_flight if r.trajectory >= 2 else Usage())
    control = JobControl()
    task = asyncio.create_task(run(spec(mode="report"), backend, control))
    while sum(r.trajectory < 2 for r in backend.requests) < 4:
        await asyncio.sleep(0.01)
    control.finish_now()
    result, _ = await task
    cut = [t for t in result.trajectories if t.index >= 2]
    assert len(cut) == 6 and all(t.usage == in_flight and t.stop_reason == "finish_now" for t in cut)
    assert result.usage.total_tokens >= sum(t.usage.total_tokens for t in result.trajectories) >= 6 * 107


async def test_a_stopping_workers_job_is_given_back_only_once_its_cut_requests_charges_are_saved():
    """A worker's stop (SIGTERM) cancels its jobs, and then closes its store and exits: the cancellation comes back
    from the scheduler only once every trajectory whose request it cut has saved that charge in its checkpoint,
    which the worker resuming the job charges (test_faults.py runs this against a worker process)."""
    cut = Usage(prompt_tokens=100, completion_tokens=7)
    backend = ScriptedBackend(researcher(), delay_s=lambda r: HANGS, in_flight=lambda r: cut)
    saved = {}

    async def save(k, data):
        await asyncio.sleep(0.01)  # a round trip to Redis
        saved[k] = Usage(**data["usage"])

    def trajectory(trajectory_spec, *args, **kwargs):
        return CheckpointedTrajectory(trajectory_spec, *args, save=save, **kwargs)
    scheduler = Scheduler(backend, ToolExecutor([DictSearch(PAGES)]), trajectory_factory=trajectory)
    job = asyncio.create_task(scheduler.run(spec(trajectories=3)))
    while len(backend.requests) < 3:
        await asyncio.sleep(0.01)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert saved == {0: cut, 1: cut, 2: cut}


class DyingEngine(Engine):
    """The runtime's engine, lost after two generated tokens (EngineDeadError is a RuntimeError)."""

    async def generate(self, prompt, params, request_id):
        async for output in super().generate(prompt, params, request_id):
            yield output
        raise RuntimeError("engine is dead")


def failing(error):
    def script(request):
        raise error
    return script


@pytest.mark.parametrize("error, charged", [
    (LLMError("runtime: malformed tool call"), Usage(prompt_tokens=100, completion_tokens=60)),
    (ContextLengthError("prompt too long", prompt_tokens=None, room=None), Usage()),  # refused: nothing computed
])
async def test_a_request_that_fails_is_charged_what_its_backend_counted_before_it_failed(error, charged):
    backend = ScriptedBackend(failing(error), in_flight=lambda request: Usage(prompt_tokens=100, completion_tokens=60))
    budget = JobTokenBudget(10_000)
    trajectory, _, _, _ = make(None, backend=backend, budget=budget)
    result = await trajectory.run()
    assert result.stop_reason == "error" and result.usage == charged and budget.used == charged.total_tokens


async def test_a_runtime_request_whose_engine_dies_mid_reply_is_charged_the_engines_count():
    engine = DyingEngine(["Let me ", "think"], hang=False)
    budget = JobTokenBudget(10_000)
    trajectory, _, _, _ = make(None, backend=RuntimeBackend(engine, Tokenizer()), budget=budget)
    result = await trajectory.run()
    assert result.stop_reason == "error" and "engine is dead" in result.error
    assert result.usage == Usage(prompt_tokens=40, completion_tokens=2, cached_prompt_tokens=16)
    assert budget.used == 42


async def test_an_aggregator_call_that_fails_is_charged_what_its_backend_counted():
    spent = Usage(prompt_tokens=100, completion_tokens=60)
    budget = JobTokenBudget(10_000)
    granted = GrantedBackend(ScriptedBackend(failing(LLMError("HTTP 500")), in_flight=lambda request: spent), budget)
    with pytest.raises(LLMError):
        await granted.chat([{"role": "user", "content": "Is it so?"}], None, Sampling(), max_tokens=4,
                           request_id="claim-check:0")
    assert granted.usage == spent and budget.used == spent.total_tokens and budget.held == 0


class ReplicaLostOnce(Engine):
    """Replicas behind the router: the first one is lost after one generated token, the next replies whole."""

    async def generate(self, prompt, params, request_id):
        lost = not self.calls
        async for output in super().generate(prompt, params, request_id):
            yield output
            if lost:
                raise ReplicaDownError("rank 0 died")


async def test_a_retried_runtime_request_is_charged_the_attempt_its_lost_replica_worked_on_too():
    budget = JobTokenBudget(10_000)
    granted = GrantedBackend(RuntimeBackend(ReplicaLostOnce(["Yes", ", it is."]), Tokenizer(), retry=RETRY_AT_ONCE),
                             budget)
    completion = await granted.chat(QUESTION, None, Sampling(), max_tokens=8, request_id="claim-check:0")
    lost, replied = Usage(40, 1, 16), Usage(40, 2, 16)
    assert completion.content == "Yes, it is." and completion.usage == lost + replied
    assert granted.usage == lost + replied and budget.used == 83


async def test_a_trajectorys_retried_step_is_charged_the_attempt_its_lost_replica_worked_on_too():
    budget = JobTokenBudget(10_000)
    backend = RuntimeBackend(ReplicaLostOnce(["Yes", ", it is."]), Tokenizer(), retry=RETRY_AT_ONCE)
    trajectory, _, _, _ = make(None, backend=backend, budget=budget, limits=TrajectoryLimits(max_steps=1))
    result = await trajectory.run()
    assert result.steps[0].usage == Usage(40, 1, 16) + Usage(40, 2, 16)
    assert budget.used == result.usage.total_tokens


def timed_out(request):
    raise httpx.ReadTimeout("timed out", request=request)


@pytest.mark.parametrize("failure, unanswered", [
    (timed_out, 1),  # its server worked on it
    (lambda request: httpx.Response(429, json={"error": {"message": "slow down"}}), 0),  # refused: it did not
])
async def test_a_retried_openai_request_is_charged_a_reply_that_timed_out_as_an_aborted_one(failure, unanswered):
    calls = []

    def handler(request):
        calls.append(request)
        return failure(request) if len(calls) == 1 else httpx.Response(200, json=REPLY)
    llm = OpenAIBackend("http://llm.test/v1", "m", transport=httpx.MockTransport(handler), retry=RETRY_AT_ONCE)
    budget = JobTokenBudget(10_000)
    granted = GrantedBackend(llm, budget)
    completion = await granted.chat(QUESTION, None, Sampling(), max_tokens=8, request_id="claim-check:0")
    timed_out = Usage(prompt_tokens=unanswered * estimate_tokens(QUESTION))
    assert len(calls) == 2 and completion.usage == Usage(50, 7, 32) + timed_out
    assert granted.usage == completion.usage and budget.used == completion.usage.total_tokens


async def test_a_report_whose_claim_checks_failed_after_their_server_worked_is_charged_them():
    """The aggregator survives a call that fails (the report goes without that check): the job is still charged
    what the call's backend counted, as the grant was."""
    counted = Usage(prompt_tokens=100, completion_tokens=60)

    def checks_fail(request):
        if request.trajectory < 0 and request.request_id != REPORT_REQUEST:
            raise LLMError("runtime: malformed reply")
        return researcher()(request)
    backend = ScriptedBackend(checks_fail, in_flight=lambda request: counted)
    result, _ = await run(spec(mode="report", trajectories=3), backend)
    checks = [r for r in backend.requests if r.trajectory < 0 and r.request_id != REPORT_REQUEST]
    replies = len(backend.requests) - len(checks)
    assert checks and result.status == "done"
    assert result.usage.total_tokens == replies * STEP_USAGE.total_tokens + len(checks) * counted.total_tokens


async def test_a_trajectory_whose_backend_crashed_after_its_server_worked_is_charged_that_request():
    counted = Usage(prompt_tokens=100, completion_tokens=60)

    def crashes(request):
        if request.trajectory == 1:
            raise RuntimeError("a bug in the backend")
        return researcher()(request)
    backend = ScriptedBackend(crashes, in_flight=lambda request: counted if request.trajectory == 1 else Usage())
    result, _ = await run(spec(mode="report", trajectories=2), backend)
    crashed = result.trajectories[1]
    assert crashed.stop_reason == "error" and "a bug in the backend" in crashed.error and crashed.usage == counted


async def test_a_resumed_job_counts_what_its_earlier_attempts_aggregation_spent_against_its_grant():
    """The worker before was stopped while it aggregated, having spent the whole grant: the job's requests find
    none of it left, and its report is charged that spend (test_faults.py hands it over between worker processes)."""
    backend = ScriptedBackend(researcher())
    earlier = Usage(prompt_tokens=9_000, completion_tokens=1_000)
    result, _ = await run(spec(mode="report", trajectories=3, job_tokens=10_000, earlier_usage=earlier), backend)
    assert result.stop_reason == "job_tokens" and result.status == "partial"
    assert not backend.requests and result.usage == earlier
