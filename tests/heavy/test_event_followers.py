"""Many clients following one job's events at once (a dashboard on a big screen, many users watching one job,
`heavy jobs watch` scripts), against the API in its own process on loopback, a worker with the scripted model and a
real redis-server: every follower gets every event in order, and the rest of the API keeps answering."""

import asyncio
import math

import httpx
import pytest

from heavy.api import event_hub
from heavy.store.records import DONE, RUNNING
from tests.heavy.api_helpers import blocked_event_reads, follow_sse
from tests.heavy.worker_helpers import JOB, assert_gap_free, spawn, stop, wait_api_ready, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

FOLLOWERS = 200  # more than the store's pool holds connections (redis-py's default: 100)


async def open_streams(client: httpx.AsyncClient) -> float:
    """The API process's count of open event streams (its heavy_sse_followers gauge)."""
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith("heavy_sse_followers "):
            return float(line.split()[1])
    raise AssertionError("no heavy_sse_followers in /metrics")


async def test_hundreds_of_followers_of_one_job_get_every_event_and_the_api_keeps_answering(service, store):
    # each follower held a pool connection for its blocking read: past 100, reads, job creation and readiness
    # checks waited for one and then failed ("Too many connections"), and streams broke off
    await service.start_api_again(env={"HEAVY_TENANT_MAX_STREAMS": str(FOLLOWERS)})  # one tenant's, all of them
    key = await store.tenants.create_key("acme")
    headers = {"Authorization": f"Bearer {key.secret}"}
    service.model_gate.clear()  # the job starts and waits on its model while the followers connect
    # a connection per request: while the followers connect, this loop may not come back to an idle one before
    # the server's keep-alive timeout has closed it
    fresh = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=service.url, headers=headers, timeout=60, limits=fresh) as client:
        submitted = await client.post("/v1/jobs", json=JOB)
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        received: list[list[dict]] = [[] for _ in range(FOLLOWERS)]
        followers = [asyncio.create_task(follow_sse(f"{service.url}/v1/jobs/{job_id}/events", headers, events))
                     for events in received]

        async def all_following_or_one_ended() -> bool:
            return await open_streams(client) >= FOLLOWERS or any(follower.done() for follower in followers)
        await wait_for(all_following_or_one_ended, timeout_s=120, interval_s=0.2)

        # the followers of one job share one blocking read (not one each, holding a pooled connection apiece)
        assert await blocked_event_reads(store) <= 1
        # while every follower waits on the job, the rest of the API answers
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        another = await client.post("/v1/jobs", json=JOB)
        assert another.status_code == 202, another.text
        listed = await client.get("/v1/jobs")
        assert listed.status_code == 200 and listed.json()["total"] == 2

        service.model_gate.set()
        outcomes = await asyncio.gather(*followers, return_exceptions=True)
    assert [outcome for outcome in outcomes if outcome is not None] == []
    stored = await store.jobs.read_events(job_id, 0, count=10_000)
    assert stored[-1]["type"] == "report_ready"
    assert_gap_free(stored, trajectories=JOB["trajectories"])
    expected = [{"id": event["seq"], **event} for event in stored]
    assert sum(events == expected for events in received) == FOLLOWERS


JOBS = 150  # more than the store's pool holds connections, each job followed by one client


@pytest.fixture
async def api_alone(store, redis_url, key_prefix, free_tcp_port):
    """The API in its own process and no worker: the test writes its jobs' events itself."""
    api = spawn("api", redis_url, key_prefix, str(free_tcp_port))
    url = f"http://127.0.0.1:{free_tcp_port}"
    await wait_api_ready(url)
    yield url
    stop(api)


async def test_a_hundred_and_fifty_jobs_each_followed_share_a_few_blocking_reads_and_get_every_event(api_alone, store):
    # each followed job's reader held a pool connection for its blocking read: past 100 jobs (a dashboard of many
    # running jobs, many users each watching their own), the readers took the pool again, and the jobs past it
    # waited for a connection before their events were read
    jobs: list[tuple[str, dict]] = []
    for n in range(JOBS):  # one tenant each, as many users each watching their own job
        key = await store.tenants.create_key(f"user{n}")
        job, _ = await store.jobs.submit(f"user{n}", question="q", mode="report", params={"trajectories": 1})
        await store.jobs.update(job.id, status=RUNNING)
        await store.jobs.append_event(job.id, {"type": "job_started", "job_id": job.id})
        jobs.append((job.id, {"Authorization": f"Bearer {key.secret}"}))
    fresh = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=api_alone, timeout=60, limits=fresh) as client:
        received: list[list[dict]] = [[] for _ in jobs]
        followers = [asyncio.create_task(follow_sse(f"{api_alone}/v1/jobs/{job_id}/events", headers, events))
                     for (job_id, headers), events in zip(jobs, received, strict=True)]

        async def all_following_or_one_ended() -> bool:
            return await open_streams(client) >= JOBS or any(follower.done() for follower in followers)
        await wait_for(all_following_or_one_ended, timeout_s=120, interval_s=0.2)
        await wait_for(lambda: asyncio.sleep(0, result=all(received)), timeout_s=60)  # each has its backlog

        # all the followed jobs' streams are read by a few blocking reads (of up to JOBS_PER_READ jobs), not one each
        assert await blocked_event_reads(store) <= math.ceil(JOBS / event_hub.JOBS_PER_READ)
        assert (await client.get("/readyz")).status_code == 200
        first_id, first_headers = jobs[0]
        assert (await client.get("/v1/jobs", headers=first_headers)).json()["total"] == 1

        for job_id, _ in jobs:
            await store.jobs.append_event(job_id, {"type": "trajectory_step", "trajectory": 0, "step": 1})
            await store.jobs.finish(await store.jobs.get(job_id), DONE, event={"type": "report_ready",
                                                                                "job_id": job_id})
        outcomes = await asyncio.gather(*followers, return_exceptions=True)
    assert [outcome for outcome in outcomes if outcome is not None] == []
    assert [[event["id"] for event in events] for events in received] == [[1, 2, 3]] * JOBS
    assert all(events[-1]["type"] == "report_ready" for events in received)


ONE_AFTER_ANOTHER = 20  # jobs followed one at a time, each while the hub's read blocks


async def connections_opened(store) -> int:
    """How many connections the Redis server has accepted since it started."""
    return (await store.redis.info("stats"))["total_connections_received"]


async def test_jobs_followed_one_after_another_while_the_read_blocks_cost_no_new_connection_each(api_alone, store):
    # a job followed while the hub's blocking read waits is not in that read: the hub cancelled it to read again with
    # the job, and redis-py closes a connection whose command was cancelled, so each job a dashboard opened or each
    # user arriving cost a reconnect (TCP, HELLO; AUTH and a Sentinel lookup in a deployment)
    followers, received = [], []
    opened_after_the_first = 0
    for n in range(ONE_AFTER_ANOTHER):
        key = await store.tenants.create_key(f"user{n}")
        job, _ = await store.jobs.submit(f"user{n}", question="q", mode="report", params={"trajectories": 1})
        await store.jobs.update(job.id, status=RUNNING)
        await store.jobs.append_event(job.id, {"type": "job_started", "job_id": job.id})
        events: list[dict] = []
        received.append((job.id, events))
        followers.append(asyncio.create_task(follow_sse(f"{api_alone}/v1/jobs/{job.id}/events",
                                                        {"Authorization": f"Bearer {key.secret}"}, events)))
        await wait_for(lambda events=events: asyncio.sleep(0, result=len(events) == 1))  # its backlog
        await store.jobs.append_event(job.id, {"type": "trajectory_step", "trajectory": 0, "step": 1})
        await wait_for(lambda events=events: asyncio.sleep(0, result=len(events) == 2))  # live: the hub reads it
        await wait_for(lambda: blocked_event_reads(store))  # and waits again, on every job so far, when the next comes
        if n == 0:  # the API's pool has the connections its requests and the read take
            opened_after_the_first = await connections_opened(store)
    assert await connections_opened(store) - opened_after_the_first <= 2  # not one per job

    for job_id, _ in received:
        await store.jobs.finish(await store.jobs.get(job_id), DONE, event={"type": "report_ready", "job_id": job_id})
    outcomes = await asyncio.gather(*followers, return_exceptions=True)
    assert [outcome for outcome in outcomes if outcome is not None] == []
    assert [[event["id"] for event in events] for _, events in received] == [[1, 2, 3]] * ONE_AFTER_ANOTHER
