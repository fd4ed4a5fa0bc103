"""The store's client between it and Redis, through a loopback proxy (tests/heavy/redis_proxy.py): after a failover
without Sentinel that moves the address to the new primary, connections pooled to the demoted one are dropped, not
kept failing with READONLY; a write whose reply the network lost, and which the client retries, is made once; a
listener that accepts and closes (Redis down behind a proxy) fails commands rather than hanging them."""

import asyncio
import contextlib
import socket

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError

from heavy.config import Settings
from heavy.embedded_redis import EmbeddedRedis
from heavy.store import Keys, Store
from heavy.store.records import DONE
from tests.heavy.redis_proxy import RedisProxy
from tests.heavy.worker_helpers import JOB, submit_job

pytestmark = pytest.mark.anyio
HANG_S = 30  # a bound on a command that should fail within a second: past it, it hangs


@contextlib.contextmanager
def own_redis(tmp_path_factory, name: str):
    server = EmbeddedRedis(tmp_path_factory.mktemp(name)).start()
    try:
        yield server
    finally:
        server.stop()


async def demote(server: EmbeddedRedis) -> None:
    """READONLY to every write, as a primary a failover demoted: a replica of a primary it cannot reach yet."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        nobody = probe.getsockname()[1]
    async with Redis.from_url(server.url) as redis:
        await redis.replicaof("127.0.0.1", nobody)


async def test_pooled_connections_to_a_demoted_primary_are_dropped_once_the_address_leads_to_the_new_one(
        tmp_path_factory, key_prefix):
    with own_redis(tmp_path_factory, "old") as old, own_redis(tmp_path_factory, "new") as new:
        async with RedisProxy(tmp_path_factory.mktemp("proxy") / "redis.sock", old.socket_path) as address:
            store = Store.connect(address.url, Settings(tenant_max_jobs=10), Keys(key_prefix))
            try:
                await submit_job(store)  # a connection to the old primary, pooled
                await demote(old)
                address.upstream = new.socket_path  # the failover moved the address (a DNS name, a virtual IP)
                job_id = await submit_job(store)
            finally:
                await store.aclose()
        async with Redis.from_url(new.url) as redis:
            assert await redis.exists(Keys(key_prefix).job(job_id))


async def test_an_event_whose_reply_was_lost_is_appended_once(tmp_path_factory, key_prefix):
    """The connection breaks after Redis ran the append and before its reply came back: the client's retry must
    not append the event a second time (a step twice in the stream, its tokens counted twice by a reader)."""
    with own_redis(tmp_path_factory, "redis") as server:
        async with RedisProxy(tmp_path_factory.mktemp("proxy") / "redis.sock", server.socket_path) as network:
            store = Store.connect(network.url, Settings(), Keys(key_prefix))
            try:
                job_id = await submit_job(store)
                await store.jobs.append_event(job_id, {"type": "job_started", "job_id": job_id})
                network.lose_reply_to = b"lost reply"
                seq = await store.jobs.append_event(job_id, {"type": "note", "text": "lost reply"})
                events = await store.jobs.read_events(job_id)
            finally:
                await store.aclose()
    assert network.lose_reply_to is None  # the reply was lost
    assert [(event["seq"], event["type"]) for event in events] == [(1, "job_started"), (seq, "note")]


async def test_a_submit_whose_reply_was_lost_queues_the_job_once_and_reserves_its_grant_once(tmp_path_factory,
                                                                                           key_prefix):
    with own_redis(tmp_path_factory, "redis") as server:
        async with RedisProxy(tmp_path_factory.mktemp("proxy") / "redis.sock", server.socket_path) as network:
            store = Store.connect(network.url, Settings(), Keys(key_prefix))
            try:
                first = await store.jobs.get(await submit_job(store))  # the script loaded: the lost reply is its run's
                network.lose_reply_to = JOB["question"].encode()
                job = await store.jobs.get(await submit_job(store))
                queued = [fields["job"] for _, fields in await store.redis.xrange(store.queue.keys.jobs_stream)]
                tenant = await store.tenants.get("acme")
            finally:
                await store.aclose()
    assert network.lose_reply_to is None  # the reply was lost
    assert queued == [first.id, job.id]
    assert tenant.tokens_reserved == first.token_grant + job.token_grant


async def test_a_finish_whose_reply_was_lost_is_not_refused_as_one_of_a_job_already_ended(tmp_path_factory,
                                                                                         key_prefix):
    """Refused, the worker would take its own end for another's: a 'worker error', the entry left unacknowledged
    and the callback not sent until a sweep, the job not counted as finished."""
    with own_redis(tmp_path_factory, "redis") as server:
        async with RedisProxy(tmp_path_factory.mktemp("proxy") / "redis.sock", server.socket_path) as network:
            store = Store.connect(network.url, Settings(), Keys(key_prefix))
            try:
                first = await store.jobs.get(await submit_job(store))
                await store.jobs.finish(first, DONE, report=("# Report", {}))  # the script loaded
                job = await store.jobs.get(await submit_job(store))
                network.lose_reply_to = b"# Lost reply"
                await store.jobs.finish(job, DONE, report=("# Lost reply", {}))
                ended = await store.jobs.get(job.id)
            finally:
                await store.aclose()
    assert network.lose_reply_to is None  # the reply was lost
    assert ended.status == DONE


async def test_a_listener_that_accepts_and_closes_fails_commands_within_the_stores_retries(
        tmp_path_factory, redis_server, key_prefix, monkeypatch):
    """A proxy or load balancer before a Redis that is down accepts each connection and closes it: the command must
    fail (store_unreachable: the run stops, the claim loop waits, the API answers 503), not hang."""
    monkeypatch.setattr("heavy.store.RECONNECT_RETRIES", 2)
    async with RedisProxy(tmp_path_factory.mktemp("proxy") / "redis.sock", redis_server.socket_path) as network:
        network.set_cut(True)  # connections accepted and closed at once
        store = Store.connect(network.url, Settings(), Keys(key_prefix))
        try:
            with pytest.raises(ConnectionError):  # not TimeoutError: hung past a bound 100 times what it takes
                await asyncio.wait_for(store.ping(), HANG_S)
        finally:
            await store.aclose()
