"""A long trajectory's checkpoints grow with its steps, not with their square: each save after the first appends what
its step changed to the trajectory's log in Redis, and the log reads back as the state it ends at."""

import json

import pytest

from heavy.agent import TrajectoryLimits, TrajectorySpec
from heavy.llm.types import Sampling
from heavy.store.checkpoint_log import folded
from heavy.tools.base import ToolExecutor, ToolLimits
from heavy.worker.checkpoint import CheckpointedTrajectory, state_of
from tests.heavy.fakes import DictSearch, ScriptedBackend, call
from tests.heavy.test_worker_checkpoint import as_restored
from tests.heavy.worker_helpers import step_of

pytestmark = pytest.mark.anyio

STEPS = 40
PAGE = "lorem ipsum dolor sit amet " * 200  # ~5 KB: a page's text, in the messages, the steps and the excerpts
PAGES = {f"http://corpus/topic{i}": f"topic{i} {PAGE}" for i in range(STEPS + 1)}


def tools() -> ToolExecutor:
    return ToolExecutor([DictSearch(PAGES)], ToolLimits(default_call_cap=STEPS))  # the default cap ends it at 20


def searcher(request):
    """A search of a new topic every step: each finds a new page, so the trajectory never stops for no progress."""
    return call("search", query=f"topic{step_of(request)}")


async def test_each_save_writes_its_steps_change_and_the_log_reads_back_as_the_whole_state(store):
    job, _ = await store.jobs.submit("acme", question="q", mode="report", params={"trajectories": 1})
    spec = TrajectorySpec(job_id=job.id, index=0, question="topic0", allowed_tools=frozenset({"search"}),
                          sampling=Sampling(), limits=TrajectoryLimits(max_steps=STEPS, total_tokens=10**7))
    key = store.jobs.keys.checkpoint(job.id, 0)
    written: list[int] = []
    logs: list[str] = []  # the log as the result found it

    async def save(k, data):
        if data["kind"] == "result":
            logs.append(await store.redis.get(key))
        written.append(len(json.dumps(data, ensure_ascii=False)))
        await store.jobs.save_checkpoint(job.id, k, data)
    made = CheckpointedTrajectory(spec, ScriptedBackend(searcher), tools(), save=save)
    await made.run()
    states = len(written) - 1  # the last save is the result
    assert states == STEPS and len(made.steps) == STEPS
    # each step adds a page (three times over): a save of step 40 wrote as much as one of step 5, not 8 times more
    assert max(written[5:states]) < 1.5 * written[4], written
    log = logs[0]
    assert sum(written[:states]) + states - 1 == len(log.encode())  # the log holds the saves, one a line

    # the result replaced the log; the state of the last step restores as it was
    result = await store.jobs.load_checkpoints(job.id, 1)
    assert result[0]["kind"] == "result"
    restored = CheckpointedTrajectory(spec, ScriptedBackend(searcher), tools(), save=save, saved=folded(log))
    assert json.loads(json.dumps(state_of(restored))) == as_restored(folded(log))
    assert len(restored.steps) == STEPS and restored.messages == made.messages[:len(restored.messages)]


def test_a_change_line_written_twice_adds_its_items_once():
    """redis-py retries a script whose reply was lost though Redis ran it: the line is then in the log twice."""
    whole = {"kind": "state", "messages": ["a"], "steps": [1], "seen_calls": ["x"], "excerpts": {"u": "1"}}
    change = {"at": {"messages": 1, "steps": 1}, "append": {"messages": ["b"], "steps": [2], "seen_calls": ["y"]},
              "update": {"excerpts": {"u": "12"}}, "no_progress": 1}
    log = "\n".join(json.dumps(line) for line in (whole, change, change))
    assert folded(log) == {"kind": "state", "messages": ["a", "b"], "steps": [1, 2], "seen_calls": ["x", "y", "y"],
                           "excerpts": {"u": "12"}, "no_progress": 1}
