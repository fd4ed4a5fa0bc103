"""A long trajectory's checkpoints grow with its steps, not with their square: each save after the first appends what
its step changed to the trajectory's log in Redis, and the log reads back as the state it ends at. Workers from
before the log (d97dcf0 and earlier) still read the whole save and write over it, and the newest save wins."""

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
    keys = store.jobs.keys.checkpoint(job.id, 0), store.jobs.keys.checkpoint_log(job.id, 0)
    written: list[int] = []
    found: list[str] = []  # the whole save and the log as the result found them

    async def save(k, data):
        if data["kind"] == "result":
            found.extend(await store.redis.mget(keys))
        written.append(len(json.dumps(data, ensure_ascii=False)))
        await store.jobs.save_checkpoint(job.id, k, data)
    made = CheckpointedTrajectory(spec, ScriptedBackend(searcher), tools(), save=save)
    await made.run()
    states = len(written) - 1  # the last save is the result
    assert states == STEPS and len(made.steps) == STEPS
    # each step adds a page (three times over): a save of step 40 wrote as much as one of step 5, not 8 times more
    assert max(written[5:states]) < 1.5 * written[4], written
    whole, log = found
    assert written[0] == len(whole.encode())
    assert sum(written[1:states]) + states - 1 == len(log.encode())  # the log holds the later saves, one a line

    # the result replaced the whole save and the log; the state of the last step restores as it was
    assert (await store.jobs.load_checkpoints(job.id, 1))[0]["kind"] == "result"
    assert not await store.redis.exists(keys[1])
    last = folded(whole, log)
    restored = CheckpointedTrajectory(spec, ScriptedBackend(searcher), tools(), save=save, saved=last)
    assert json.loads(json.dumps(state_of(restored))) == as_restored(last)
    assert len(restored.steps) == STEPS and restored.messages == made.messages[:len(restored.messages)]


async def test_a_worker_from_before_the_log_resumes_from_the_whole_save_and_the_newest_save_wins(store):
    """A rolling update or a rollback: a newer worker dies after three steps, an older one (d97dcf0 and earlier:
    json.loads of the checkpoint key, a whole state SET there each step) takes the job over and dies after a step of
    its own, and a newer one takes it back."""
    job, _ = await store.jobs.submit("acme", question="q", mode="report", params={"trajectories": 1})
    spec = TrajectorySpec(job_id=job.id, index=0, question="topic0", allowed_tools=frozenset({"search"}),
                          sampling=Sampling(), limits=TrajectoryLimits(max_steps=8, total_tokens=10**7))
    key = store.jobs.keys.checkpoint(job.id, 0)

    def dying_after(saves: int, save):
        """`save` until the worker dies, after `saves` of them: the run goes on in memory, its writes are lost."""
        done = []

        async def saving(k, data):
            if len(done) < saves:
                await save(k, data)
            done.append(data)
        return saving

    async def newer_save(k, data):
        await store.jobs.save_checkpoint(job.id, k, data)

    newer = CheckpointedTrajectory(spec, ScriptedBackend(searcher), tools(), save=dying_after(3, newer_save))
    await newer.run()
    newest = (await store.jobs.load_checkpoints(job.id, 1))[0]
    assert len(newest["steps"]) == 3
    # the older worker reads the key it knows as one line of JSON: the whole save, the state after the first step
    as_older_reads = json.loads(await store.redis.get(key))
    assert as_older_reads["kind"] == "state" and len(as_older_reads["steps"]) == 1
    assert as_older_reads["messages"] == newest["messages"][:len(as_older_reads["messages"])]

    async def older_save(k, data):  # d97dcf0's after_step: SET the whole state, the log untouched
        await store.redis.set(key, json.dumps(state_of(older), ensure_ascii=False))
    older = CheckpointedTrajectory(spec, ScriptedBackend(searcher), tools(), save=dying_after(1, older_save),
                                   saved=as_older_reads)
    await older.run()
    older_state = json.loads(await store.redis.get(key))
    assert len(older_state["steps"]) == 2 and await store.redis.exists(store.jobs.keys.checkpoint_log(job.id, 0))
    # its save is the newest: the lines the first run logged after its own whole save are passed over
    assert await store.jobs.load_checkpoints(job.id, 1) == {0: older_state}

    taken_back = CheckpointedTrajectory(spec, ScriptedBackend(searcher), tools(), save=dying_after(2, newer_save),
                                        saved=older_state)
    await taken_back.run()
    last = (await store.jobs.load_checkpoints(job.id, 1))[0]
    assert len(last["steps"]) == 4 and last["steps"][:2] == older_state["steps"]
    assert len(json.loads(await store.redis.get(key))["steps"]) == 3  # its whole save: an older worker's start


def test_a_change_line_written_twice_adds_its_items_once():
    """redis-py retries a script whose reply was lost though Redis ran it: the line is then in the log twice."""
    whole = {"kind": "state", "log": "a", "messages": ["a"], "steps": [1], "seen_calls": ["x"],
             "excerpts": {"u": "1"}}
    change = {"log": "a", "at": {"messages": 1, "steps": 1},
              "append": {"messages": ["b"], "steps": [2], "seen_calls": ["y"]}, "update": {"excerpts": {"u": "12"}},
              "no_progress": 1}
    log = "".join(json.dumps(line) + "\n" for line in (change, change))
    assert folded(json.dumps(whole), log) == {
        "kind": "state", "log": "a", "messages": ["a", "b"], "steps": [1, 2], "seen_calls": ["x", "y", "y"],
        "excerpts": {"u": "12"}, "no_progress": 1}
