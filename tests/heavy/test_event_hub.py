"""The API process's event hub (heavy/api/event_hub.py) over a real redis-server: a few blocking reads for all the
jobs followed hand each job's events to every follower, each from where that follower started, and end only the
streams they should."""

import asyncio

import pytest
from prometheus_client import REGISTRY

from heavy.api import event_hub
from heavy.api.event_hub import EventHub
from heavy.embedded_redis import EmbeddedRedis
from heavy.store import Keys, Store, StoreError
from heavy.store.records import DONE, RUNNING
from tests.heavy.api_helpers import blocked_event_reads
from tests.heavy.worker_helpers import wait_for

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def short_reads(monkeypatch):
    monkeypatch.setattr(event_hub, "BLOCK_MS", 50)


async def running_job(store, events: int) -> str:
    job, _ = await store.jobs.submit("acme", question="q", mode="report", params={"trajectories": 1})
    await store.jobs.update(job.id, status=RUNNING)
    for n in range(events):
        await store.jobs.append_event(job.id, {"type": "trajectory_step", "n": n})
    return job.id


async def collect(stream, into: list[int]) -> None:
    async for event in stream:
        into.append(event["seq"])


async def finish(store, job_id: str, live_events: int) -> None:
    for n in range(live_events):
        await store.jobs.append_event(job_id, {"type": "trajectory_step", "n": n})
    await store.jobs.finish(await store.jobs.get(job_id), DONE, event={"type": "report_ready", "job_id": job_id})


async def test_followers_starting_at_different_events_each_get_all_that_follow_their_own_live(store):
    # the first follower resumes from past the stream's end: the job's reader must not start there, or those who
    # join after it from earlier events got their backlog and then nothing until the job's end
    key = (await store.tenants.create_key("acme")).secret
    job_id = await running_job(store, 3)
    hub = EventHub(store)
    ahead, middle, start = [], [], []
    followers = [asyncio.create_task(collect(hub.follow(job_id, after, key), into))
                 for after, into in ((10**6, ahead), (2, middle), (0, start))]
    await wait_for(lambda: asyncio.sleep(0, result=len(start) == 3 and len(middle) == 1))
    await finish(store, job_id, live_events=2)
    await asyncio.gather(*followers)
    assert (ahead, middle, start) == ([], [3, 4, 5, 6], [1, 2, 3, 4, 5, 6])


async def test_a_revoked_key_ends_only_its_own_followers_streams(store):
    keep, revoke = await store.tenants.create_key("acme"), await store.tenants.create_key("acme")
    job_id = await running_job(store, 1)
    hub = EventHub(store)
    kept, revoked = [], []
    followers = [asyncio.create_task(collect(hub.follow(job_id, 0, key.secret), into))
                 for key, into in ((keep, kept), (revoke, revoked))]
    await wait_for(lambda: asyncio.sleep(0, result=kept == revoked == [1]))
    await store.tenants.revoke(revoke.key_id)
    await asyncio.wait_for(followers[1], 10)
    await finish(store, job_id, live_events=1)
    await asyncio.wait_for(followers[0], 10)
    assert (kept, revoked) == ([1, 2, 3], [1])


def readers() -> float:
    return REGISTRY.get_sample_value("heavy_sse_readers")


async def test_a_jobs_reader_stops_once_its_followers_have_left(store):
    key = (await store.tenants.create_key("acme")).secret
    job_id = await running_job(store, 1)
    hub = EventHub(store)
    seen: list[int] = []
    before = readers()
    followers = [asyncio.create_task(collect(hub.follow(job_id, 0, key), seen)) for _ in range(3)]
    await wait_for(lambda: asyncio.sleep(0, result=seen == [1, 1, 1]))
    assert readers() == before + 1  # one for the job, however many follow it
    for follower in followers:
        follower.cancel()
    await asyncio.gather(*followers, return_exceptions=True)
    await wait_for(lambda: asyncio.sleep(0, result=not hub._readers))
    assert await blocked_event_reads(store) == 0
    assert readers() == before


async def test_a_job_followed_while_the_read_blocks_gets_its_events_without_waiting_for_the_read_to_end(
        store, monkeypatch):
    # all followed jobs are read in one blocking read: one followed meanwhile is not in it, and its events waited
    # for that read to time out unless the hub reads again with it
    monkeypatch.setattr(event_hub, "BLOCK_MS", 60_000)
    key = (await store.tenants.create_key("acme")).secret
    first, second = await running_job(store, 1), await running_job(store, 1)
    hub = EventHub(store)
    seen_first, seen_second = [], []
    following_first = asyncio.create_task(collect(hub.follow(first, 0, key), seen_first))
    await wait_for(lambda: asyncio.sleep(0, result=seen_first == [1]))
    await wait_for(lambda: blocked_event_reads(store))  # the hub's read waits on the first job alone
    following_second = asyncio.create_task(collect(hub.follow(second, 0, key), seen_second))
    await wait_for(lambda: asyncio.sleep(0, result=seen_second == [1]))
    await store.jobs.append_event(second, {"type": "trajectory_step", "n": 1})
    await wait_for(lambda: asyncio.sleep(0, result=seen_second == [1, 2]), timeout_s=10)  # not after the 60 s
    assert await blocked_event_reads(store) == 1  # both jobs in one read
    await finish(store, second, live_events=0)
    await finish(store, first, live_events=0)
    await asyncio.wait_for(asyncio.gather(following_first, following_second), 10)
    assert (seen_first, seen_second) == ([1, 2], [1, 2, 3])


async def test_jobs_fill_reads_of_jobs_per_read_then_share_them_and_each_gets_its_events(store, monkeypatch):
    # one read over thousands of busy jobs packed and looked up every stream at each event: it is split
    monkeypatch.setattr(event_hub, "JOBS_PER_READ", 2)
    monkeypatch.setattr(event_hub, "READS", 2)
    key = (await store.tenants.create_key("acme")).secret
    await store.tenants.set_limits("acme", max_jobs=5)
    job_ids = [await running_job(store, 1) for _ in range(5)]
    hub = EventHub(store)
    seen: dict[str, list[int]] = {job_id: [] for job_id in job_ids}
    followers = [asyncio.create_task(collect(hub.follow(job_id, 0, key), seen[job_id])) for job_id in job_ids]
    await wait_for(lambda: asyncio.sleep(0, result=all(events == [1] for events in seen.values())))
    assert sorted(len(read.jobs) for read in hub._reads) == [2, 3]

    async def both_reads_wait() -> bool:
        return await blocked_event_reads(store) == 2  # not one per job, nor one for all
    await wait_for(both_reads_wait)
    for job_id in job_ids:
        await finish(store, job_id, live_events=1)
    await asyncio.wait_for(asyncio.gather(*followers), 10)
    assert all(events == [1, 2, 3] for events in seen.values())


@pytest.mark.slow
async def test_redis_down_past_the_retries_breaks_every_followed_stream_and_a_follower_after_it_reads_again(
        tmp_path, key_prefix):
    # the one read serves every followed job: its failure must reach all their streams (their clients resume), and
    # leave no loop behind that a follower arriving once Redis is back would wait on
    server = EmbeddedRedis(tmp_path).start()
    store = Store.connect(server.url, keys=Keys(key_prefix))
    try:
        key = (await store.tenants.create_key("acme")).secret
        job_ids = [await running_job(store, 1), await running_job(store, 1)]
        hub = EventHub(store)
        seen: list[int] = []
        followers = [asyncio.create_task(collect(hub.follow(job_id, 0, key), seen)) for job_id in job_ids]
        await wait_for(lambda: asyncio.sleep(0, result=seen == [1, 1]))
        server.stop()
        outcomes = await asyncio.wait_for(asyncio.gather(*followers, return_exceptions=True), 60)
        assert [type(outcome) for outcome in outcomes] == [StoreError, StoreError]
        assert not hub._readers
        server.start()
        resumed: list[int] = []
        follower = asyncio.create_task(collect(hub.follow(job_ids[0], 1, key), resumed))
        await finish(store, job_ids[0], live_events=1)
        await asyncio.wait_for(follower, 10)
        assert resumed == [2, 3]
    finally:
        await store.aclose()
        server.stop()
