"""The Redis job store against a real redis-server and a real Redis Cluster: jobs, tenants, quotas, idempotency,
review gate, cancel, delete and retention, clocks, API keys (events, checkpoints and the queue: test_store_streams)."""

import asyncio
import time

import pytest

from heavy.store import (
    IdempotencyConflict,
    InvalidTransition,
    JobNotFound,
    JobStore,
    Keys,
    QuotaExceeded,
    Store,
    UnknownApiKey,
)
from heavy.store import jobs as jobs_module
from heavy.store.connection import POOL_CONNECTIONS
from heavy.store.records import CANCELLED, DONE, FAILED, QUEUED, RUNNING

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["server", "cluster"])
def redis_url(request) -> str:
    """Each test on one redis-server and on a Redis Cluster (`store` is conftest's, over this URL). A cluster client
    sends a MULTI without its `execute_command`: there the ack test checks the ack, not its injected death."""
    return request.getfixturevalue("redis_server" if request.param == "server" else "redis_cluster").url


async def submit(store, tenant="acme", **kwargs):
    values = dict(question="Why is the sky blue?", mode="report", params={"trajectories": 2})
    values.update(kwargs)
    job, _ = await store.jobs.submit(tenant, **values)
    return job


async def test_submit_get_and_list_newest_first_with_pagination(store):
    ids = [(await submit(store, question=f"q{i}")).id for i in range(3)]
    job = await store.jobs.get(ids[0], "acme")
    assert (job.status, job.question, job.params, job.tenant) == (QUEUED, "q0", {"trajectories": 2}, "acme")
    page, total = await store.jobs.list("acme", offset=0, limit=2)
    assert total == 3 and [j.id for j in page] == ids[::-1][:2]
    page, _ = await store.jobs.list("acme", offset=2, limit=2)
    assert [j.id for j in page] == ids[:1]


async def test_a_list_filtered_by_status_pages_through_the_jobs_in_those_statuses(store):
    for i in range(5):
        job = await submit(store, question=f"q{i}")
        if i % 2:  # q1, q3
            await store.jobs.finish(job, DONE)
    done, total = await store.jobs.list("acme", statuses={DONE})
    assert total == 2 and [j.question for j in done] == ["q3", "q1"]
    page, total = await store.jobs.list("acme", statuses={QUEUED, FAILED}, offset=1, limit=1)
    assert total == 3 and [j.question for j in page] == ["q2"]


async def test_a_tenant_never_sees_another_tenants_job(store):
    job = await submit(store, tenant="acme")
    with pytest.raises(JobNotFound):
        await store.jobs.get(job.id, "globex")
    for action in (store.jobs.cancel, store.jobs.approve, store.jobs.finish_now):
        with pytest.raises(JobNotFound):
            await action(job.id, "globex")
    assert (await store.jobs.list("globex"))[1] == 0


async def test_idempotency_key_replays_the_same_job_and_refuses_a_different_body(store):
    first, replayed = await store.jobs.submit("acme", question="q", mode="report", params={}, idempotency_key="k1",
                                              fingerprint="body-a")
    again, replayed_again = await store.jobs.submit("acme", question="q", mode="report", params={},
                                                    idempotency_key="k1", fingerprint="body-a")
    assert (again.id, replayed, replayed_again) == (first.id, False, True)
    with pytest.raises(IdempotencyConflict):
        await store.jobs.submit("acme", question="other", mode="report", params={}, idempotency_key="k1",
                                fingerprint="body-b")
    other_tenant, _ = await store.jobs.submit("globex", question="q", mode="report", params={},
                                              idempotency_key="k1", fingerprint="body-a")
    assert other_tenant.id != first.id
    assert await store.queue.depth() == 2  # the replay enqueued nothing


async def test_concurrent_job_quota_is_released_when_a_job_ends(store):
    jobs = [await submit(store) for _ in range(3)]  # the fixture's default limit is 3
    with pytest.raises(QuotaExceeded) as err:
        await submit(store)
    assert err.value.limit == "jobs"
    await store.jobs.finish(jobs[0], DONE, tokens=500)
    await submit(store)
    tenant = await store.tenants.get("acme")
    assert (tenant.active_jobs, tenant.tokens_used) == (3, 500)


async def test_token_quota_refuses_new_jobs_once_spent(store):
    await store.tenants.set_limits("acme", max_tokens=1000)
    job = await submit(store)
    await store.jobs.finish(job, DONE, tokens=1000)
    with pytest.raises(QuotaExceeded) as err:
        await submit(store)
    assert err.value.limit == "tokens"
    await submit(store, tenant="globex")  # other tenants are not affected


async def test_jobs_running_at_once_are_granted_no_more_tokens_than_the_tenant_has_left(store):
    await store.tenants.set_limits("acme", max_tokens=1000)
    first = await submit(store, params={"trajectories": 2, "job_tokens": 600})
    second = await submit(store, params={"trajectories": 2, "job_tokens": 600})  # 400 left for it
    assert [j.token_grant for j in [await store.jobs.get(first.id), await store.jobs.get(second.id)]] == [600, 400]
    with pytest.raises(QuotaExceeded):  # nothing left unreserved, though nothing is spent yet
        await submit(store, params={"trajectories": 2, "job_tokens": 600})
    assert (await store.tenants.get("acme")).tokens_reserved == 1000
    await store.jobs.finish(first, DONE, tokens=250)  # charged what it spent, its grant given back
    tenant = await store.tenants.get("acme")
    assert (tenant.tokens_used, tenant.tokens_reserved) == (250, 400)
    third = await submit(store, params={"trajectories": 2, "job_tokens": 600})
    assert (await store.jobs.get(third.id)).token_grant == 350
    await store.jobs.cancel(second.id, "acme")  # a queued job ended by a cancel gives its grant back too
    assert (await store.tenants.get("acme")).tokens_reserved == 350


async def test_review_gate_waits_for_approval_before_queueing(store):
    job = await submit(store, review=True, plan={"estimate_tokens": 1234})
    assert job.status == "awaiting_approval" and job.plan == {"estimate_tokens": 1234}
    assert await store.queue.claim_new("w1", block_ms=10) == []
    approved = await store.jobs.approve(job.id, "acme")
    assert approved.status == QUEUED
    claims = await store.queue.claim_new("w1", block_ms=10)
    assert [c.job_id for c in claims] == [job.id]
    with pytest.raises(InvalidTransition):
        await store.jobs.approve(job.id, "acme")


async def test_a_job_held_for_review_takes_its_slot_and_grant_only_when_approved(store):
    await store.tenants.set_limits("acme", max_jobs=2, max_tokens=1000)
    params = {"trajectories": 2, "job_tokens": 600}
    held = [await submit(store, review=True, params=params) for _ in range(3)]  # a reviewer's backlog
    tenant = await store.tenants.get("acme")
    assert (tenant.active_jobs, tenant.tokens_reserved) == (0, 0)
    running = await submit(store, params=params)  # the backlog locks no one out
    approved = await store.jobs.approve(held[0].id, "acme")
    assert (approved.status, approved.token_grant) == (QUEUED, 400)  # what the tenant had left
    with pytest.raises(QuotaExceeded) as err:  # two running: the third waits for a slot, still held
        await store.jobs.approve(held[1].id, "acme")
    assert err.value.limit == "jobs" and (await store.jobs.get(held[1].id)).status == "awaiting_approval"
    await store.jobs.finish(running, DONE, tokens=1000 - 400)  # all it was granted
    with pytest.raises(QuotaExceeded) as err:  # a slot now, but no token left ungranted
        await store.jobs.approve(held[1].id, "acme")
    assert err.value.limit == "tokens"
    await store.jobs.finish(approved, DONE, tokens=100)
    assert (await store.jobs.approve(held[1].id, "acme")).token_grant == 300
    tenant = await store.tenants.get("acme")
    assert (tenant.active_jobs, tenant.tokens_used, tenant.tokens_reserved) == (1, 700, 300)
    await store.jobs.cancel(held[2].id, "acme")  # ended while held: it had nothing to give back
    assert (await store.tenants.get("acme")).tokens_reserved == 300


async def test_approving_a_held_job_concurrently_takes_one_slot_once(store):
    await store.tenants.set_limits("acme", max_jobs=1)
    held = [await submit(store, review=True) for _ in range(3)]
    outcomes = await asyncio.gather(*(store.jobs.approve(job.id, "acme") for job in held * 2),
                                    return_exceptions=True)
    assert sum(not isinstance(o, Exception) for o in outcomes) == 1
    assert {type(o) for o in outcomes if isinstance(o, Exception)} <= {QuotaExceeded, InvalidTransition}
    assert (await store.tenants.get("acme")).active_jobs == 1 and await store.queue.depth() == 1


async def test_a_tenant_holds_no_more_jobs_for_review_than_its_cap_and_one_approved_or_ended_makes_room(store):
    store.jobs.max_held_jobs = 2
    held = [await submit(store, review=True) for _ in range(2)]
    with pytest.raises(QuotaExceeded) as err:
        await submit(store, review=True)
    assert err.value.limit == "held" and "2 jobs held for review" in str(err.value)
    assert (await store.jobs.list("acme"))[1] == 2  # the refused one was not made
    await submit(store)  # jobs to run are not held
    await submit(store, tenant="globex", review=True)  # nor another tenant's
    await store.jobs.approve(held[0].id, "acme")
    replacement = await submit(store, review=True)
    await store.jobs.cancel(held[1].id, "acme")
    await submit(store, review=True)
    with pytest.raises(QuotaExceeded):
        await submit(store, review=True)
    store.jobs.approval_window_s = 0.1  # and an expired one
    await store.jobs.cancel(replacement.id, "acme")
    expiring = await submit(store, review=True)
    await asyncio.sleep(0.2)
    assert await store.jobs.expire_unapproved() == [expiring.id]
    await submit(store, review=True)


async def test_concurrent_submissions_for_review_hold_no_more_than_the_cap(store):
    store.jobs.max_held_jobs = 2
    outcomes = await asyncio.gather(*(submit(store, review=True) for _ in range(6)), return_exceptions=True)
    assert sum(not isinstance(o, Exception) for o in outcomes) == 2
    assert {type(o) for o in outcomes if isinstance(o, Exception)} == {QuotaExceeded}


async def test_a_job_not_approved_within_its_window_is_cancelled_and_releases_its_slot_and_grant(store):
    store.jobs.approval_window_s = 0.2
    params = {"trajectories": 2, "job_tokens": 600}
    late, approved, withdrawn = [await submit(store, review=True, params=params) for _ in range(3)]
    assert late.approve_by == pytest.approx(late.created + 0.2)
    await store.jobs.approve(approved.id, "acme")
    await store.jobs.cancel(withdrawn.id, "acme")
    assert await store.jobs.expire_unapproved() == []  # none is due yet
    await asyncio.sleep(0.3)
    assert await store.jobs.expire_unapproved() == [late.id]  # the approved and the cancelled one left the set
    expired = await store.jobs.get(late.id)
    assert (expired.status, expired.stop_reason, expired.error) == (CANCELLED, "approval_expired",
                                                                     "not approved within 0.2 s")
    assert [e["type"] for e in await store.jobs.read_events(late.id)] == ["job_cancelled"]
    tenant = await store.tenants.get("acme")
    assert tenant.tokens_reserved == 600  # the approved job's grant only
    with pytest.raises(InvalidTransition):
        await store.jobs.approve(late.id, "acme")
    assert (await store.jobs.get(approved.id)).status == QUEUED and await store.jobs.expire_unapproved() == []
    store.jobs.approval_window_s = 0
    assert (await submit(store, review=True)).approve_by is None  # 0: a held job waits for ever


async def test_cancel_queued_running_and_finished_jobs(store):
    queued = await submit(store)
    cancelled = await store.jobs.cancel(queued.id, "acme")
    assert cancelled.status == CANCELLED
    assert [e["type"] for e in await store.jobs.read_events(queued.id)] == ["job_cancelled"]
    assert (await store.jobs.cancel(queued.id, "acme")).status == CANCELLED  # no-op

    running = await submit(store)
    await store.jobs.update(running.id, status=RUNNING)
    assert (await store.jobs.cancel(running.id, "acme")).control == "cancel"

    done = await submit(store)
    await store.jobs.finish(done, DONE)
    with pytest.raises(InvalidTransition):
        await store.jobs.cancel(done.id, "acme")
    with pytest.raises(InvalidTransition, match="only a running job"):
        await store.jobs.finish_now(done.id, "acme")


async def _keys_of(store, job_id: str) -> list[str]:
    return [key async for key in store.redis.scan_iter(match=f"{store.jobs.keys.job(job_id)}*")]


async def test_deleting_an_ended_job_removes_all_it_left_and_frees_its_idempotency_key(store):
    job, _ = await store.jobs.submit("acme", question="q", mode="report", params={"trajectories": 2},
                                     idempotency_key="k1", fingerprint="body")
    await store.jobs.append_event(job.id, {"type": "job_started"})
    await store.jobs.save_checkpoint(job.id, 1, {"steps": [1]})
    with pytest.raises(InvalidTransition, match="cancel it before deleting it"):
        await store.jobs.delete(job.id, "acme")
    await store.jobs.finish(job, DONE, report=("# Report", {"answer": "blue"}))
    assert len(await _keys_of(store, job.id)) == 4  # hash, events, the appends, report (the checkpoint went at the end)
    with pytest.raises(JobNotFound):
        await store.jobs.delete(job.id, "globex")

    await store.jobs.delete(job.id, "acme")
    assert await _keys_of(store, job.id) == []
    assert await store.jobs.list("acme") == ([], 0)
    with pytest.raises(JobNotFound):
        await store.jobs.delete(job.id, "acme")
    again, replayed = await store.jobs.submit("acme", question="q", mode="report", params={},
                                              idempotency_key="k1", fingerprint="body")
    assert again.id != job.id and not replayed  # the key named a job that is gone: a new request


async def test_requests_racing_on_the_idempotency_key_of_a_deleted_job_create_one_job(store, monkeypatch):
    """The key names a job that is gone, so the next request with it is a new one. Two such requests race: the
    first learns the job is gone only after the second has made the new one; it must replay that one, not drop the
    key again and make a second job."""
    values = dict(question="q", mode="report", params={}, idempotency_key="k1", fingerprint="body")
    job, _ = await store.jobs.submit("acme", **values)
    await store.jobs.finish(job, DONE)
    await store.jobs.delete(job.id, "acme")
    get, first_is_reading, first_may_read = store.jobs.get, asyncio.Event(), asyncio.Event()

    async def first_reads_late(*args, **kwargs):
        if not first_is_reading.is_set():
            first_is_reading.set()
            await first_may_read.wait()
        return await get(*args, **kwargs)

    monkeypatch.setattr(store.jobs, "get", first_reads_late)
    first = asyncio.create_task(store.jobs.submit("acme", **values))
    await first_is_reading.wait()
    second, replayed = await store.jobs.submit("acme", **values)
    assert not replayed
    first_may_read.set()
    assert await first == (second, True)
    assert (await store.jobs.list("acme"))[1] == 1


async def test_an_ended_jobs_keys_expire_after_the_retention_and_leave_the_list(store):
    jobs = JobStore(store.redis, store.jobs.keys, retention_s=1.0)
    running, _ = await jobs.submit("acme", question="q1", mode="report", params={"trajectories": 1})
    await jobs.append_event(running.id, {"type": "job_started"})
    await jobs.save_checkpoint(running.id, 0, {"steps": []})
    await jobs.finish(running, DONE, report=("# Report", {}))
    queued, _ = await jobs.submit("acme", question="q2", mode="report", params={"trajectories": 1})
    await jobs.cancel(queued.id, "acme")  # its stream begins with the event written after it ended
    kept, _ = await jobs.submit("acme", question="q3", mode="report", params={"trajectories": 1})
    for job in (running, queued):
        ttls = [await store.redis.pttl(key) for key in await _keys_of(store, job.id)]
        assert ttls and all(0 < ttl <= 1000 for ttl in ttls)
    assert [await store.redis.pttl(key) for key in await _keys_of(store, kept.id)] == [-1]  # active: kept

    await asyncio.sleep(1.1)
    assert await _keys_of(store, running.id) == await _keys_of(store, queued.id) == []
    page, total = await jobs.list("acme")
    assert [j.id for j in page] == [kept.id] and total == 1


async def test_an_approval_window_holds_against_an_api_process_whose_clock_runs_behind(store, monkeypatch):
    """`approve_by` is set on Redis's clock, which the expiry sweep reads: a job submitted through an API process
    whose clock is an hour behind is not cancelled as soon as a worker sweeps."""
    store.jobs.approval_window_s = 60
    behind = time.time() - 3600
    monkeypatch.setattr(jobs_module.time, "time", lambda: behind)
    before = await store.jobs.server_time()
    job = await submit(store, review=True)
    monkeypatch.undo()
    assert before + 60 <= job.approve_by <= await store.jobs.server_time() + 60
    assert (await store.jobs.get(job.id)).approve_by == job.approve_by
    assert await store.jobs.expire_unapproved() == []


async def test_a_callback_lease_holds_against_a_process_whose_clock_runs_ahead(store, monkeypatch):
    """Callback leases are kept on Redis's clock: a sweeping worker whose clock is an hour ahead sees the callback
    another process is sending as held, not as due (it would post it again while the first POST is out)."""
    job = await submit(store, callback_url="http://receiver.example/hook")
    await store.jobs.finish(job, DONE)
    assert await store.jobs.claim_callback(job.id, lease_s=60)  # the process that ended it sends it
    ahead = time.time() + 3600
    monkeypatch.setattr(jobs_module.time, "time", lambda: ahead)
    assert await store.jobs.due_callbacks() == []
    assert not await store.jobs.claim_callback(job.id, lease_s=60)


async def test_api_keys_are_stored_hashed_resolved_listed_and_revoked(store):
    key = await store.tenants.create_key("acme", "ci")
    assert key.secret.startswith("hv_") and await store.tenants.resolve(key.secret) == "acme"
    assert key.secret not in repr(key)  # a logged key object shows no secret
    dump = [k async for k in store.redis.scan_iter(f"{store.jobs.keys.prefix}*")]
    values = [str(await store.redis.hgetall(k)) for k in dump if await store.redis.type(k) == "hash"]
    assert not any(key.secret in text for text in dump + values)
    listed = await store.tenants.list_keys("acme")
    assert [(k.key_id, k.name, k.secret) for k in listed] == [(key.key_id, "ci", "")]
    assert await store.tenants.unknown([key.secret, "hv_never-made"]) == {"hv_never-made"}
    await store.tenants.revoke(key.key_id)
    assert await store.tenants.unknown([key.secret]) == {key.secret}
    with pytest.raises(UnknownApiKey):
        await store.tenants.resolve(key.secret)
    with pytest.raises(UnknownApiKey):
        await store.tenants.revoke(key.key_id)


async def test_a_burst_of_commands_past_the_pool_waits_for_connections_instead_of_failing(redis_url, key_prefix):
    """Hundreds of requests at once to one API process (clients opening event streams together) each send a command
    or a pipeline: past the pool's connections (a cluster node's, on a cluster) they failed at once with "Too many
    connections" (a 503 each)."""
    store = Store.connect(redis_url, keys=Keys(key_prefix))
    try:
        job = await submit(store)
        burst = await asyncio.gather(*(store.jobs.get(job.id) for _ in range(3 * POOL_CONNECTIONS)))
        assert {got.id for got in burst} == {job.id}
        pages = await asyncio.gather(*(store.jobs.list("acme") for _ in range(3 * POOL_CONNECTIONS)))  # pipelines
        assert {tuple(got.id for got in page) for page, _ in pages} == {(job.id,)}
    finally:
        await store.aclose()
