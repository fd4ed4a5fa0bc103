"""Trajectory checkpoints: a saved state restores to an identical trajectory, a saved result is returned without
running again, and every piece of a trajectory's mutable state is part of the checkpoint."""

import asyncio
import copy
import json
from dataclasses import asdict, fields

import pytest

from heavy.agent import JobTokenBudget, StopSignal, TrajectoryLimits, TrajectorySpec
from heavy.llm.types import Sampling, ToolCall, Usage
from heavy.store.checkpoint_log import is_change, with_change
from heavy.tools.base import Source, ToolExecutor, ToolLimits
from heavy.worker.checkpoint import CheckpointedTrajectory, result_from_dict, state_of
from tests.heavy.fakes import ScriptedBackend
from tests.heavy.test_job_grant import counting_chinese_as_the_embedded_tokenizer
from tests.heavy.worker_helpers import PAGES, DictSearch, executor, researcher, step_of

pytestmark = pytest.mark.anyio

SPEC = TrajectorySpec(job_id="j", index=0, question="Which module parses command-line options?",
                      allowed_tools=frozenset({"search"}), sampling=Sampling(), limits=TrajectoryLimits(max_steps=4))
# Set once from the spec and the run's wiring, not state that evolves step by step.
WIRING = {"spec", "executor", "events", "stop", "tools", "checks", "deadline", "final", "save",
          "saved_result", "requests", "checkpoint", "saved"}  # checkpoint, saved: what was restored, saved
REQUESTS_WIRING = {"backend", "limits", "sampling", "stop", "job_budget", "prefix_key"}  # ModelRequests


def as_loaded(saves: list[dict], data: dict) -> dict:
    """The checkpoint Redis would give back after saving `data` (a change line: on top of the saves before it)."""
    data = json.loads(json.dumps(data))
    return with_change(copy.deepcopy(saves[-1]), data) if is_change(data) else data


def as_restored(state: dict) -> dict:
    """A saved state as restoring reads it: its sources by url (a later one in a change line replaces the earlier
    one, in its place), the calls seen as a set, without the name of its log (the save's, not the trajectory's)."""
    restored = {**state, "evidence": list({s["url"]: s for s in state["evidence"]}.values()),
                "seen_calls": sorted(state["seen_calls"])}
    restored.pop("log", None)
    return restored


def trajectory(saved=None, backend=None, budget=None, tools=None):
    saves = []

    async def save(k, data):
        saves.append(as_loaded(saves, data))
    made = CheckpointedTrajectory(SPEC, backend or ScriptedBackend(researcher), tools or executor(), save=save,
                                  saved=saved, job_budget=budget)
    return made, saves


async def test_every_mutable_attribute_is_checkpointed():
    made, _ = trajectory()
    # tool_calls: the executor's count of this trajectory's calls (the job's caps), not an attribute of its own
    mutable = (set(vars(made)) - WIRING) | (set(vars(made.requests)) - REQUESTS_WIRING)
    # counted_per_estimated: saved once a reply showed it (test_a_checkpoint_before_any_reply_...)
    assert mutable == set(state_of(made)) - {"kind", "tool_calls"} | {"counted_per_estimated"}


async def test_a_restored_trajectorys_tool_calls_still_count_against_the_jobs_caps():
    first, saves = trajectory()
    result = await first.run()
    searches = [len(s["observations"]) for s in saves[0]["steps"]]
    assert saves[0]["tool_calls"] == {"search": sum(searches)} == {"search": 1}  # the opening search
    assert saves[-1]["tool_calls"] == {"search": first.executor.calls_made("j", "search")}
    # another worker, whose executor never ran this job: a cap of one search is already used up
    tools = ToolExecutor([DictSearch(PAGES)], ToolLimits(default_call_cap=1))
    resumed, _ = trajectory(saved=saves[0], tools=tools)
    assert tools.calls_made("j", "search") == 1
    again = await resumed.run()
    refused = [o for s in again.steps[1:] for o in s.observations]
    assert refused and all("call limit reached" in (o.error or "") for o in refused), refused
    assert len(again.steps) == len(result.steps)


async def test_a_restored_state_continues_where_the_saved_one_stopped():
    first, saves = trajectory()
    result = await first.run()
    assert result.stop_reason == "answered" and [s["kind"] for s in saves] == ["state", "state", "result"]
    after_two_steps = saves[1]

    backend, budget = ScriptedBackend(researcher), JobTokenBudget(10_000)
    resumed, resumed_saves = trajectory(saved=after_two_steps, backend=backend, budget=budget)
    assert json.loads(json.dumps(state_of(resumed))) == as_restored(after_two_steps)
    again = await resumed.run()
    assert [step_of(r) for r in backend.requests] == [2]  # only the step after the checkpoint ran
    assert again.answer == result.answer and len(again.steps) == 3
    assert [o.call.arguments for s in again.steps for o in s.observations] == [
        o.call.arguments for s in result.steps for o in s.observations]
    assert budget.used == again.usage.total_tokens  # restored spending counts against the job budget
    assert result_from_dict(resumed_saves[-1]["result"]) == again


async def test_a_saved_result_is_returned_without_running():
    first, saves = trajectory()
    result = await first.run()
    backend = ScriptedBackend(researcher)
    budget = JobTokenBudget(10_000)
    done, _ = trajectory(saved=saves[-1], backend=backend, budget=budget)
    assert await done.run() == result and backend.requests == [] and budget.used == result.usage.total_tokens


async def test_a_restored_trajectory_gives_the_job_what_its_server_counted_per_estimated_token_and_its_context():
    """The job's ratio scales the aggregator's grant holds and prompts, which fit the server's context a refusal
    showed (agent/budget.py): a worker that takes the job over has both from the checkpoints, of a trajectory that
    ended before the takeover too (it sends no request again, and the aggregation over its pages was held and
    fitted by the bare estimate, to HEAVY_CONTEXT_TOKENS)."""
    first, saves = trajectory(backend=ScriptedBackend(counting_chinese_as_the_embedded_tokenizer(researcher)))
    await first.run()
    ratio = first.requests.counted_per_estimated
    assert ratio > 1.5 and [s["kind"] for s in saves] == ["state", "state", "result"]
    for saved, counted in ((saves[1], saves[1]["counted_per_estimated"]), (saves[-1], ratio)):
        budget = JobTokenBudget(10_000)
        trajectory(saved=saved, budget=budget)
        assert budget.counted_per_estimated == counted > 1.5, saved["kind"]
        assert budget.served_context is None  # no refusal showed the server's context smaller
    budget = JobTokenBudget(10_000)
    trajectory(saved=saves[0], budget=budget)  # after the opening search: no reply showed the ratio
    assert "counted_per_estimated" not in saves[0] and budget.counted_per_estimated is None
    assert saves[-1]["context_tokens"] == SPEC.limits.context_tokens
    for saved in (saves[1], saves[-1]):  # a refusal had shown it (the report pass is fitted to it)
        budget = JobTokenBudget(10_000)
        trajectory(saved={**saved, "context_tokens": 3000}, budget=budget)
        assert budget.served_context == 3000, saved["kind"]


def as_a_newer_worker_wrote(data):
    """`data` with a field added to each usage, source and tool call in it, as a newer heavy's would write them."""
    if isinstance(data, list):
        return [as_a_newer_worker_wrote(value) for value in data]
    if not isinstance(data, dict):
        return data
    grown = {key: as_a_newer_worker_wrote(value) for key, value in data.items()}
    if any(set(data) == {f.name for f in fields(cls)} for cls in (Usage, Source, ToolCall)):
        grown["added_later"] = 1
    return grown


async def test_a_checkpoint_whose_usages_sources_and_calls_a_newer_worker_gave_more_fields_is_resumed():
    """A worker rolled back, or an older one during a rolling upgrade, takes over a job a newer one checkpointed:
    fields the newer one's Usage, Source or ToolCall gained are passed over (heavy/compat.py), not a TypeError that
    fails the job."""
    first, saves = trajectory()
    result = await first.run()
    assert result.evidence and all(step.calls for step in result.steps[:-1])
    for saved in (saves[1], saves[-1]):  # after two steps; the result
        newer = as_a_newer_worker_wrote(saved)
        assert json.dumps(newer).count("added_later") > 3, saved["kind"]
        resumed, _ = trajectory(saved=newer)
        again = await resumed.run()
        assert again.answer == result.answer and again.evidence == result.evidence, saved["kind"]
    assert result_from_dict(as_a_newer_worker_wrote(saves[-1]["result"])) == result


async def test_a_checkpoint_before_any_reply_is_one_an_older_worker_can_resume():
    """During a rolling upgrade or a downgrade a worker of before b036a45 may take the job over. It restores the
    ratio as `saved.get("counted_per_estimated", 1.0)` and compares and calibrates with it: a null there failed the
    job (TypeError), as a trajectory cut in its first model request (by its worker's stop, or the worker's death
    after the opening search's checkpoint) had saved it. A checkpoint leaves it out until a reply showed it."""
    backend = ScriptedBackend(researcher, delay_s=lambda request: 60.0 if step_of(request) == 1 else 0.0,
                              in_flight=lambda request: Usage(prompt_tokens=100, completion_tokens=7))
    first, saves = trajectory(backend=backend)
    running = asyncio.create_task(first.run())
    while not backend.requests:  # the first model request is in flight
        await asyncio.sleep(0.01)
    running.cancel()  # the worker stops
    with pytest.raises(asyncio.CancelledError):
        await running
    assert [s["kind"] for s in saves] == ["state", "state"]  # the opening search's, again with the cut request
    for saved in saves:
        assert isinstance(saved.get("counted_per_estimated", 1.0), float)  # as the older worker reads it
    budget = JobTokenBudget(10_000)
    trajectory(saved=saves[-1], budget=budget)  # this worker still reads it as not known
    assert budget.counted_per_estimated is None


async def test_a_trajectory_cut_by_its_workers_stop_saves_its_last_checkpoint_again_with_what_it_spent_since():
    """The worker stops (SIGTERM) while a restored trajectory's request is in flight: the checkpoint it resumed from
    is saved again, tool calls and all, with what the server spent on the cut request on top of its usage."""
    first, saves = trajectory()
    await first.run()
    cut = Usage(prompt_tokens=100, completion_tokens=7)
    backend = ScriptedBackend(researcher, delay_s=lambda request: 30, in_flight=lambda request: cut)
    resumed, resumed_saves = trajectory(saved=saves[1], backend=backend)
    run = asyncio.create_task(resumed.run())
    while not backend.requests:
        await asyncio.sleep(0.01)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert resumed_saves == [{**as_restored(saves[1]), "usage": asdict(Usage(**saves[1]["usage"]) + cut)}]


async def test_a_trajectory_a_stop_cut_saves_its_last_checkpoint_again_with_what_the_cut_request_spent():
    """Finish-now while a request is in flight: the trajectory ends stopped, not done, and a worker that resumes the
    job (its first one stopped while it aggregated) continues it from its checkpoint, which carries that charge."""
    cut = Usage(prompt_tokens=100, completion_tokens=7)
    backend = ScriptedBackend(researcher, delay_s=lambda request: 30 if step_of(request) else 0,
                              in_flight=lambda request: cut if step_of(request) else Usage())
    saves, stop = [], StopSignal()

    async def save(k, data):
        saves.append(as_loaded(saves, data))
    made = CheckpointedTrajectory(SPEC, backend, executor(), save=save, stop=stop)
    run = asyncio.create_task(made.run())
    while not any(step_of(request) for request in backend.requests):
        await asyncio.sleep(0.01)
    stop.set("finish_now")
    assert (await run).stop_reason == "finish_now"
    assert saves[1:] == [{**saves[0], "usage": asdict(Usage(**saves[0]["usage"]) + cut)}]
