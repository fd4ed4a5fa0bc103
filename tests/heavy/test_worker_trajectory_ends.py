"""A trajectory's end (its trajectory_done) when something around it fails, against real Redis through the REST
API (test_worker.py's fixtures): a trajectory whose first run crashed (its lane ended on the error) and whose worker
then died is run again by the worker that takes the job over, and followers end with that run's outcome, the one the
report holds; a trajectory whose result could not be checkpointed ended all the same, once."""

import pytest
from prometheus_client import REGISTRY
from redis.exceptions import ConnectionError as RedisConnectionError

from heavy.display import LiveBoard
from heavy.events import event_from_dict
from tests.heavy.api_helpers import parse_sse
from tests.heavy.fakes import ScriptedBackend
from tests.heavy.test_worker import client, start_worker, status_is  # noqa: F401 (fixtures)
from tests.heavy.worker_helpers import JOB, assert_gap_free, researcher, step_of, wait_for

pytestmark = pytest.mark.anyio


def crashing_on_trajectory_0s_last_step(request):
    """A bug outside the model's errors (no LLMError): trajectory 0's last step raises; the others' wait."""
    if request.trajectory == 0 and step_of(request) == 2:
        raise RuntimeError("a parser bug")
    return researcher(request)


async def test_a_crashed_trajectory_run_again_after_a_takeover_ends_its_lane_with_the_reruns_answer(
        client, store, start_worker):  # noqa: F811 (fixtures)
    first = ScriptedBackend(crashing_on_trajectory_0s_last_step,
                            delay_s=lambda r: 60 if r.trajectory > 0 and step_of(r) == 2 else 0)
    w1 = start_worker(first, "w1")
    job = (await client.post("/v1/jobs", json=JOB)).json()

    async def crashed_and_the_others_waiting():
        events = await store.jobs.read_events(job["id"], 0, count=10_000)
        crashed = any(e["type"] == "trajectory_done" and e["error"] for e in events)
        return crashed and sum(r.trajectory > 0 and step_of(r) == 2 for r in first.requests) == 2
    await wait_for(crashed_and_the_others_waiting)
    w1.task.cancel()  # its worker dies: no status change, no acknowledgement
    await w1.close()

    start_worker(ScriptedBackend(researcher), "w2")
    done = await status_is(client, job["id"], "done", "partial", "failed")
    assert done["status"] == "done" and done["attempts"] == 2
    report = (await client.get(f"/v1/jobs/{job['id']}/report")).json()
    assert [(t["answer"], t["error"]) for t in report["trajectories"]] == [("argparse", None)] * 3

    events = [e["data"] for e in parse_sse((await client.get(f"/v1/jobs/{job['id']}/events")).text)]
    ends = [(e["stop_reason"], e["answer"], e["error"]) for e in events
            if e["type"] == "trajectory_done" and e["trajectory"] == 0]
    assert ends == [("error", "", "RuntimeError: a parser bug"), ("answered", "argparse", "")]  # none lost
    board = LiveBoard(3)  # what `heavy jobs watch` draws (the dashboard applies the events in the same way)
    for data in events:
        board.apply(event_from_dict({k: v for k, v in data.items() if k != "seq"}))  # as it follows them
    assert [(lane.status, lane.action) for lane in board.lanes] == [("answered", "answer: argparse")] * 3


def trajectories_ended(stop_reason: str) -> float:
    return REGISTRY.get_sample_value("heavy_trajectories_total", {"stop_reason": stop_reason}) or 0.0


async def test_a_trajectory_whose_result_could_not_be_checkpointed_ends_once_with_its_answer(
        client, store, start_worker, monkeypatch):  # noqa: F811 (fixtures)
    """Its trajectory_done was out when the result's save failed (Redis past the store's retries): the scheduler
    took that for a crash and ended it again, with the error: the metrics counted it twice, and this job, every
    trajectory of which did so, failed with nothing to aggregate."""
    save = store.jobs.save_checkpoint

    async def failing_for_results(job_id, trajectory, data, **kwargs):
        if data["kind"] == "result":
            raise RedisConnectionError("Connection reset by peer")
        await save(job_id, trajectory, data, **kwargs)
    monkeypatch.setattr(store.jobs, "save_checkpoint", failing_for_results)
    answered, errors = trajectories_ended("answered"), trajectories_ended("error")
    start_worker(ScriptedBackend(researcher))
    job = (await client.post("/v1/jobs", json=JOB)).json()
    done = await status_is(client, job["id"], "done", "partial", "failed")

    assert (trajectories_ended("answered") - answered, trajectories_ended("error") - errors) == (3, 0)
    assert done["status"] == "done"  # not failed: every trajectory had ended the second time on the error
    events = [e["data"] for e in parse_sse((await client.get(f"/v1/jobs/{job['id']}/events")).text)]
    assert_gap_free(events, trajectories=3)  # one trajectory_done each
    report = (await client.get(f"/v1/jobs/{job['id']}/report")).json()
    assert [(t["answer"], t["error"]) for t in report["trajectories"]] == [("argparse", None)] * 3
