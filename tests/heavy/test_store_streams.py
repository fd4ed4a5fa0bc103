"""The Redis job store's side that workers and the event hub use, against a real redis-server and a real Redis
Cluster (test_store.py's `redis_url`): gap-free event streams and their blocking reads, checkpoints and reports,
the writes of a worker that lost its job, and the consumer-group queue."""

import asyncio
import contextlib

import pytest

from heavy.store import JobNotFound, JobStore, JobTakenOver, scripts
from heavy.store import jobs as jobs_module
from heavy.store.keys import Keys
from heavy.store.records import AGGREGATING, DONE, FAILED, QUEUED, RUNNING
from tests.heavy.test_store import redis_url, submit  # noqa: F401 (redis_url: the fixture `store` runs on)
from tests.heavy.worker_helpers import wait_for

pytestmark = pytest.mark.anyio


async def test_events_are_numbered_without_gaps_and_readers_can_resume(store):
    job = await submit(store)
    seqs = await asyncio.gather(*(store.jobs.append_event(job.id, {"type": "trajectory_step", "n": i})
                                  for i in range(20)))
    assert sorted(seqs) == list(range(1, 21))
    tail = await store.jobs.read_events(job.id, after=15)
    assert [e["seq"] for e in tail] == [16, 17, 18, 19, 20]
    assert (await store.jobs.get(job.id)).events == 20
    assert await store.jobs.progress_of([job.id, "nope"]) == [(QUEUED, 20), None]
    with pytest.raises(JobNotFound):
        await store.jobs.append_event("nope", {"type": "x"})


async def test_a_blocking_reader_wakes_on_the_next_event(store):
    job = await submit(store)
    reader = asyncio.create_task(store.jobs.read_events(job.id, after=0, block_ms=5000))
    await asyncio.sleep(0.05)
    await store.jobs.append_event(job.id, {"type": "job_started"})
    assert [e["type"] for e in await reader] == ["job_started"]


async def test_a_read_of_several_jobs_ends_when_woken_even_before_it_began_and_only_once(store):
    # the event hub adds a job to its read by ending it through its wake stream, not by cancelling it
    afters = {(await submit(store)).id: 0 for _ in range(2)}
    wake = store.jobs.wake_stream()
    await store.jobs.wake(wake)  # woken before it began: it returns at once all the same
    assert await store.jobs.read_events_of(afters, block_ms=60_000, wake=wake) == {}
    reading = asyncio.create_task(store.jobs.read_events_of(afters, block_ms=60_000, wake=wake))
    await asyncio.sleep(0.05)
    await store.jobs.wake(wake)
    assert await asyncio.wait_for(reading, 10) == {}
    assert 0 < await store.redis.ttl(wake.key) <= jobs_module.WAKE_TTL_S  # a stopped process's goes away
    job_id = list(afters)[1]
    await store.jobs.append_event(job_id, {"type": "job_started"})
    batches = await asyncio.wait_for(store.jobs.read_events_of(afters, block_ms=60_000, wake=wake), 10)
    assert {job: [event["type"] for event in events] for job, events in batches.items()} == {job_id: ["job_started"]}


async def test_checkpoints_and_report_round_trip_and_the_checkpoints_go_when_the_job_ends(store):
    job = await submit(store)
    await store.jobs.save_checkpoint(job.id, 1, {"kind": "state", "log": "a", "steps": [1, 2]})
    await store.jobs.save_checkpoint(job.id, 1, {"log": "a", "at": {"steps": 2}, "append": {"steps": [3]}})
    assert await store.jobs.load_checkpoints(job.id, 2) == {1: {"kind": "state", "log": "a", "steps": [1, 2, 3]}}
    assert await store.jobs.get_report(job.id) is None
    await store.jobs.finish(job, DONE, report=("# Report", {"answer": "blue"}),
                            event={"type": "report_ready", "job_id": job.id})
    assert await store.jobs.get_report(job.id) == ("# Report", {"answer": "blue"})
    assert [e["type"] for e in await store.jobs.read_events(job.id)] == ["report_ready"]
    # a trajectory's checkpoint holds all it read: kept for the retention, a long job's took megabytes for nothing
    assert await store.jobs.load_checkpoints(job.id, 2) == {}
    assert not await store.redis.exists(store.jobs.keys.checkpoint_log(job.id, 1))  # nor its log


async def test_a_workers_writes_of_a_job_another_took_over_or_that_ended_change_nothing(store):
    """Events, checkpoints and the aggregating status of a stalled worker are fenced on the job's `worker`, as its
    end is: no duplicate event for the new owner, no checkpoint over its own, and none written after the end, where
    it would never expire."""
    jobs = JobStore(store.redis, store.jobs.keys, retention_s=60.0)
    job, _ = await jobs.submit("acme", question="q", mode="report", params={"trajectories": 1})
    await jobs.update(job.id, status=RUNNING, worker="w1")
    assert await jobs.append_event(job.id, {"type": "job_started"}, owner="w1") == 1
    await jobs.save_checkpoint(job.id, 0, {"steps": [1]}, owner="w1")

    await jobs.update(job.id, worker="w2")  # w2's claim
    with pytest.raises(JobTakenOver):
        await jobs.append_event(job.id, {"type": "trajectory_step"}, owner="w1")
    with pytest.raises(JobTakenOver):
        await jobs.save_checkpoint(job.id, 0, {"steps": [1, 2]}, owner="w1")
    with pytest.raises(JobTakenOver):
        await jobs.update(job.id, allowed=(RUNNING, AGGREGATING), owner="w1", status=AGGREGATING)
    assert [e["type"] for e in await jobs.read_events(job.id)] == ["job_started"]
    assert await jobs.load_checkpoints(job.id, 1) == {0: {"steps": [1]}}
    assert (await jobs.get(job.id)).status == RUNNING

    await jobs.finish(job, FAILED, owner="w2")
    await store.redis.delete(jobs.keys.checkpoint(job.id, 0))
    with pytest.raises(JobTakenOver):  # even under the name the job ended with (a job given up)
        await jobs.save_checkpoint(job.id, 0, {"steps": [1, 2]}, owner="w2")
    assert await store.redis.exists(jobs.keys.checkpoint(job.id, 0)) == 0
    with pytest.raises(JobNotFound):
        await jobs.save_checkpoint("nope", 0, {}, owner="w1")


async def test_a_jobs_append_ids_go_by_themselves_though_an_older_worker_ends_it_and_an_older_api_deletes_it(
        store, monkeypatch):
    """The append ids answer a retried append, seconds after it. A worker or API older than them (a rolling update,
    a rollback) ends and deletes a job by keys that do not name them: they stayed in Redis for ever."""
    jobs = JobStore(store.redis, store.jobs.keys, retention_s=60.0)
    job, _ = await jobs.submit("acme", question="q", mode="report", params={"trajectories": 1})
    await jobs.append_event(job.id, {"type": "job_started"})
    appends = jobs.keys.appends(job.id)
    assert 0 < await store.redis.pttl(appends) <= scripts.APPEND_IDS_TTL_MS
    parts = Keys.job_parts
    monkeypatch.setattr(Keys, "job_parts", lambda keys, job_id, trajectories: [  # as before the append ids
        key for key in parts(keys, job_id, trajectories) if key != keys.appends(job_id)])
    await jobs.finish(job, DONE)
    await jobs.delete(job.id, "acme")
    assert await store.redis.exists(jobs.keys.job(job.id)) == 0
    assert 0 < await store.redis.pttl(appends) <= scripts.APPEND_IDS_TTL_MS


async def test_a_jobs_append_ids_keep_their_hour_when_it_ends_not_its_retention(store):
    """They answer a retried append, seconds after it: the job's end gave them its retention (30 days by default)."""
    jobs = JobStore(store.redis, store.jobs.keys, retention_s=30 * 86400.0)
    job, _ = await jobs.submit("acme", question="q", mode="report", params={"trajectories": 1})
    await jobs.append_event(job.id, {"type": "job_started"})
    await jobs.finish(job, DONE)
    assert 0 < await store.redis.pttl(jobs.keys.appends(job.id)) <= scripts.APPEND_IDS_TTL_MS
    short = JobStore(store.redis, store.jobs.keys, retention_s=60.0)  # a job kept a minute: its ids go with it
    job, _ = await short.submit("acme", question="q", mode="report", params={"trajectories": 1})
    await short.append_event(job.id, {"type": "job_started"})
    await short.finish(job, DONE)
    assert 0 < await store.redis.pttl(short.keys.appends(job.id)) <= 60_000


async def test_queue_lease_renewal_and_claim_of_a_dead_workers_entry(store):
    job = await submit(store)
    (claim,) = await store.queue.claim_new("w1", block_ms=10)
    assert claim.job_id == job.id
    await asyncio.sleep(0.15)
    assert await store.queue.renew("w1", [claim.entry_id], lease_ms=100) == []  # w1 is alive: its lease starts again
    assert await store.queue.claim_abandoned("w2", lease_ms=100) == []
    # w1 died: no renewal; w2 polls as a live worker does (a quiet queue is an outage: tests/heavy/test_faults_redis.py)
    (taken,) = await wait_for(lambda: store.queue.claim_abandoned("w2", lease_ms=100))
    assert taken == claim
    lost = await store.queue.renew("w1", [claim.entry_id], lease_ms=100)
    assert lost == [claim.entry_id]  # w1 woke up: not its job any more
    await store.queue.ack(taken.entry_id)
    assert await store.queue.pending() == 0 and await store.queue.depth() == 0


async def test_a_lease_run_out_while_no_worker_reached_redis_is_not_taken_until_its_owner_had_a_lease_to_renew(store):
    """An outage cuts every worker off from Redis alike: its owner could not renew an entry its rescuer could not
    take either. Once Redis is back the owner gets a lease to renew it before it is taken for dead."""
    await submit(store)
    (claim,) = await store.queue.claim_new("w1", block_ms=10)
    assert await store.queue.renew("w1", [claim.entry_id], lease_ms=100) == []
    await asyncio.sleep(0.3)  # no worker reaches Redis, for longer than the lease
    assert await store.queue.claim_abandoned("w2", lease_ms=100) == []  # w2 is back first: w1 may be alive
    assert await store.queue.renew("w1", [claim.entry_id], lease_ms=100) == []  # it was: still its job
    # w1 died then: after a lease without renewal, w2 (polling) takes it
    (taken,) = await wait_for(lambda: store.queue.claim_abandoned("w2", lease_ms=100))
    assert taken == claim


async def consumers(store) -> set[str]:
    return {c["name"] for c in await store.redis.xinfo_consumers(store.queue.keys.jobs_stream, "workers")}


async def test_the_consumers_of_workers_gone_are_dropped_but_not_one_with_an_entry_pending(store):
    """Each worker start names a consumer of its own, which the group keeps until told: restarts piled them up."""
    await store.tenants.set_limits("acme", max_jobs=100)
    for n in range(20):  # workers that each ran a job and stopped
        await submit(store)
        (claim,) = await store.queue.claim_new(f"stopped-{n}", block_ms=10)
        await store.queue.ack(claim.entry_id)
    await submit(store)
    await store.queue.claim_new("died-running-a-job", block_ms=10)  # its entry is pending: kept for a takeover
    assert len(await consumers(store)) == 21
    assert await store.queue.forget_gone_workers(idle_ms=60_000) == []  # not idle long enough
    dropped = await store.queue.forget_gone_workers(idle_ms=0)
    assert sorted(dropped) == sorted(f"stopped-{n}" for n in range(20))
    assert await consumers(store) == {"died-running-a-job"} and await store.queue.pending() == 1


async def test_an_ack_is_one_step_a_process_cannot_die_inside(store, monkeypatch):
    """A worker killed after the first command of its acknowledgement reached Redis (XACK without XDEL) would leave
    an entry in the stream that no one redelivers and `heavy_queue_depth` counts for ever."""
    await submit(store)
    (claim,) = await store.queue.claim_new("w1", block_ms=10)
    execute = store.redis.execute_command

    async def killed(*args, **kwargs):
        raise asyncio.CancelledError

    async def killed_after_this_one(*args, **kwargs):
        monkeypatch.setattr(store.redis, "execute_command", killed)
        return await execute(*args, **kwargs)

    monkeypatch.setattr(store.redis, "execute_command", killed_after_this_one)
    with contextlib.suppress(asyncio.CancelledError):
        await store.queue.ack(claim.entry_id)
    monkeypatch.undo()
    assert (await store.queue.pending(), await store.queue.depth()) == (0, 0)
