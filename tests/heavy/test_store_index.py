"""The tenant's status sets, which a job list filtered by status reads (heavy/store/job_list.py): every status
write moves the job between them in its own step, a page is the filtered list's, jobs made before the sets (and, in a
rolling upgrade, jobs older processes submit or delete) are put right, and expired jobs leave them. On one
redis-server and on a Redis Cluster."""

import asyncio

import pytest

from heavy.store import JobStore, Keys, QuotaExceeded, Store
from heavy.store.records import ACTIVE, AGGREGATING, AWAITING_APPROVAL, CANCELLED, DONE, FAILED, QUEUED, RUNNING

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["server", "cluster"])
def redis_url(request) -> str:
    return request.getfixturevalue("redis_server" if request.param == "server" else "redis_cluster").url


async def submit(jobs: JobStore, tenant="acme", **kwargs):
    job, _ = await jobs.submit(tenant, **{"question": "q", "mode": "report", "params": {}, **kwargs})
    return job


async def status_sets(store, tenant="acme") -> dict[str, set[str]]:
    """What the tenant's status sets hold, the empty ones left out."""
    keys = store.jobs.keys
    held = {status: set(await store.redis.zrange(keys.tenant_status_jobs(tenant, status), 0, -1))
            for status in (*ACTIVE, DONE, FAILED, CANCELLED, "partial")}
    return {status: ids for status, ids in held.items() if ids}


async def test_every_status_write_moves_the_job_between_the_status_sets(store):
    jobs = store.jobs
    queued, held, expiring = await submit(jobs), await submit(jobs, review=True), await submit(jobs, review=True)
    assert await status_sets(store) == {QUEUED: {queued.id}, AWAITING_APPROVAL: {held.id, expiring.id}}

    await jobs.approve(held.id, "acme")
    await jobs.update(queued.id, status=RUNNING, worker="w1")
    assert await status_sets(store) == {QUEUED: {held.id}, RUNNING: {queued.id}, AWAITING_APPROVAL: {expiring.id}}
    await jobs.update(queued.id, allowed=(RUNNING,), owner="w1", status=AGGREGATING)
    await jobs.update(queued.id, allowed=(AGGREGATING,), owner="w1", stops=1)  # no status: the sets stay
    await jobs.finish(await jobs.get(queued.id), DONE, owner="w1")
    await jobs.cancel(held.id, "acme")
    await store.redis.zadd(jobs.keys.awaiting, {expiring.id: 0})  # its approval window is over
    assert await jobs.expire_unapproved() == [expiring.id]
    assert await status_sets(store) == {DONE: {queued.id}, CANCELLED: {held.id, expiring.id}}

    await jobs.delete(held.id, "acme")
    assert await status_sets(store) == {DONE: {queued.id}, CANCELLED: {expiring.id}}
    assert set(await store.redis.zrange(jobs.keys.tenant_expiring("acme"), 0, -1)) == {queued.id, expiring.id}


async def test_a_filtered_page_is_the_page_of_the_list_filtered(store):
    """Same order (created time, then id, newest first; equal times too), offsets and totals as filtering the whole
    list, for one status and for several."""
    jobs = JobStore(store.redis, store.jobs.keys, default_max_jobs=20)
    made = [await submit(jobs, question=f"q{i}") for i in range(9)]
    for i, job in enumerate(made):
        if i % 3 == 1:
            await jobs.finish(job, DONE)
        elif i % 3 == 2:
            await jobs.finish(job, FAILED)
    same_time = [await submit(jobs) for _ in range(3)]
    for job in same_time:  # created at one instant
        await store.redis.hset(jobs.keys.job(job.id), "created", 1e12)
        await store.redis.zadd(jobs.keys.tenant_jobs("acme"), {job.id: 1e12})
        await store.redis.zadd(jobs.keys.tenant_status_jobs("acme", QUEUED), {job.id: 1e12})
    everything, _ = await jobs.list("acme", limit=100)
    assert await pages_by_cursor(jobs, (), limit=2) == [job.id for job in everything]
    for statuses in ({DONE}, {DONE, FAILED}, {QUEUED, FAILED}, set(ACTIVE)):
        expected = [job.id for job in everything if job.status in statuses]
        for offset, limit in ((0, 2), (1, 3), (4, 100), (20, 5)):
            page, total = await jobs.list("acme", offset=offset, limit=limit, statuses=statuses)
            assert ([job.id for job in page], total) == (expected[offset : offset + limit], len(expected))
        assert await pages_by_cursor(jobs, statuses, limit=2) == expected


async def pages_by_cursor(jobs: JobStore, statuses, limit: int) -> list[str]:
    """The filtered list read page by page at each page's `older` cursor, then read back at each `newer` one: each
    page read back is the one read, and where it is counted right."""
    pages = [await jobs.page("acme", limit=limit, statuses=statuses)]
    while pages[-1].older:
        pages.append(await jobs.page("acme", limit=limit, statuses=statuses, cursor=pages[-1].older))
    back = pages[-1]
    for page in pages[-2::-1]:
        back = await jobs.page("acme", limit=limit, statuses=statuses, cursor=back.newer)
        assert (back.jobs, back.position) == (page.jobs, page.position)
    assert back.newer is None and [page.position for page in pages] == list(range(0, len(pages) * limit, limit))
    return [job.id for page in pages for job in page.jobs]


async def test_jobs_made_before_the_status_sets_are_put_on_them(store):
    """A store older than the sets: its jobs are on the tenant's list only. The first filtered list indexes them."""
    jobs = store.jobs
    queued, done = await submit(jobs), await submit(jobs)
    await jobs.finish(done, DONE)
    await store.redis.delete(*jobs.keys.tenant_status_indexes("acme"))  # as before the sets

    page, total = await jobs.list("acme", statuses={DONE})
    assert ([job.id for job in page], total) == ([done.id], 1)
    assert await status_sets(store) == {QUEUED: {queued.id}, DONE: {done.id}}


async def test_jobs_an_older_process_submits_or_deletes_after_the_tenant_was_indexed_are_mended(
        store, redis_url, key_prefix):
    """A rolling upgrade: processes older than the sets still submit and delete jobs after a newer one indexed the
    tenant. Their jobs are on the list and on no set, the ones they delete on a set and off the list; a filtered
    list (of any process, however long it has run) finds both, though its page meets neither."""
    jobs, keys = store.jobs, store.jobs.keys
    deleted = await submit(jobs)
    await jobs.finish(deleted, DONE)
    await jobs.list("acme", statuses={QUEUED})  # indexed; this process has seen the tenant's sets
    older_submit = await submit(jobs)
    await store.redis.zrem(keys.tenant_status_jobs("acme", QUEUED), older_submit.id)  # an older SUBMIT: list only
    await store.redis.delete(keys.job(deleted.id))  # an older DELETE: off the list, its status set kept
    await store.redis.zrem(keys.tenant_jobs("acme"), deleted.id)
    newer = await submit(jobs)
    await jobs.finish(newer, DONE)

    other = Store.connect(redis_url, keys=Keys(key_prefix))  # a process that never saw the tenant's sets
    try:
        for reader in (jobs, other.jobs):
            page, total = await reader.list("acme", statuses={QUEUED})
            assert ([job.id for job in page], total) == ([older_submit.id], 1)
            page, total = await reader.list("acme", statuses={DONE}, limit=1)
            assert ([job.id for job in page], total) == ([newer.id], 1)
    finally:
        await other.aclose()
    assert await status_sets(store) == {QUEUED: {older_submit.id}, DONE: {newer.id}}


async def test_a_page_leaves_out_and_mends_a_job_whose_status_moved_without_its_set(store):
    """A process older than the sets (during an upgrade) moves a job's status without moving it between sets."""
    jobs = store.jobs
    job = await submit(jobs)
    await jobs.list("acme", statuses={QUEUED})  # indexed
    await store.redis.hset(jobs.keys.job(job.id), "status", RUNNING)  # as an older worker's TRANSITION does
    assert await jobs.list("acme", statuses={QUEUED}) == ([], 0)
    assert await status_sets(store) == {RUNNING: {job.id}}


async def test_jobs_whose_keys_expired_leave_the_list_and_the_status_sets_before_a_page_is_read(store):
    """The totals count only jobs still there, though the page (the newest job) never met the expired ones."""
    expiring = JobStore(store.redis, store.jobs.keys, retention_s=0.5)
    ended = [await submit(expiring), await submit(expiring)]
    for job in ended:
        await expiring.finish(job, DONE)
    kept = await submit(store.jobs)
    await store.jobs.finish(kept, FAILED)  # under a long retention
    await expiring.list("acme", statuses={DONE})  # indexed (the backfill would drop the expired jobs too)
    await asyncio.sleep(0.6)
    assert await expiring.list("acme", statuses={DONE, FAILED}, limit=1) == ([await store.jobs.get(kept.id)], 1)
    assert await status_sets(store) == {FAILED: {kept.id}}
    assert await store.redis.zrange(store.jobs.keys.tenant_jobs("acme"), 0, -1) == [kept.id]
    assert await store.redis.zrange(store.jobs.keys.tenant_expiring("acme"), 0, -1) == [kept.id]  # later
    assert (await expiring.list("acme", limit=1))[1] == 1


async def test_jobs_a_process_older_than_the_held_set_holds_count_against_the_held_jobs_cap(store):
    """A rolling upgrade from a store (and API processes) older than the held set: the jobs it holds for review are
    on the tenant's list only, on no status set nor the held set, which the held-jobs cap counts. Before a job is
    held, they are put on it; and one such a process approved leaves it when a page meets it."""
    jobs, keys = store.jobs, store.jobs.keys
    jobs.max_held_jobs = 2

    async def held_by_an_older_process():
        job = await submit(jobs, review=True)
        await store.redis.srem(keys.tenant_held("acme"), job.id)  # as its SUBMIT left it: on the list only
        await store.redis.zrem(keys.tenant_status_jobs("acme", AWAITING_APPROVAL), job.id)
        return job

    first = await held_by_an_older_process()
    await jobs.list("acme", statuses={QUEUED})  # a newer process indexes the tenant
    second = await held_by_an_older_process()
    with pytest.raises(QuotaExceeded) as err:
        await submit(jobs, review=True)
    assert err.value.limit == "held"
    assert await store.redis.smembers(keys.tenant_held("acme")) == {first.id, second.id}

    await store.redis.hset(keys.job(first.id), "status", QUEUED)  # approved by an older process
    assert await jobs.list("acme", statuses={AWAITING_APPROVAL}) == ([await jobs.get(second.id)], 1)
    assert (await submit(jobs, review=True)).status == AWAITING_APPROVAL
