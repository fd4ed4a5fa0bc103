"""A task cancelled in a Redis command stops, on Python 3.11 too: redis-py sends each command under asyncio.wait_for,
which there drops a cancel that arrives as the send completes (tests/heavy/held_sends.py forces that moment). The
store's clients raise it (heavy/store/connection.py), and the connection it leaves serves no stale reply."""

import asyncio

import pytest

from heavy.store.connection import redis_client
from tests.heavy.held_sends import hold_send_until_cancelled

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["server", "cluster"])
def redis_url(request) -> str:
    """On one redis-server (a unix socket) and on a Redis Cluster (TCP on loopback); `store` is over this URL."""
    return request.getfixturevalue("redis_server" if request.param == "server" else "redis_cluster").url


async def command(redis, key: str, value: str) -> None:
    await redis.set(key, value)


async def transaction(redis, key: str, value: str) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(key, value)
        await pipe.execute()


@pytest.mark.parametrize("send", [command, transaction])
async def test_a_task_cancelled_as_its_command_is_sent_stops_and_the_next_command_gets_its_own_reply(
        store, key_prefix, monkeypatch, send):
    held = hold_send_until_cancelled(monkeypatch, store.redis, b"cancelled-as-sent")
    ran_on = []

    async def sender():
        await send(store.redis, f"{key_prefix}sent", "cancelled-as-sent")
        ran_on.append(True)  # a lost cancel: the reply read, and the task goes on

    task = asyncio.create_task(sender())
    await held.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled() and not ran_on
    # the cancelled command's reply ("OK") is not read as a later command's
    assert [await store.redis.incr(f"{key_prefix}count") for _ in range(3)] == [1, 2, 3]


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0", "rediss://127.0.0.1:1/0", "unix:///nowhere.sock",
                                 "redis+sentinel://127.0.0.1:1,127.0.0.1:2/heavy"])
def test_every_kind_of_url_makes_connections_that_keep_cancels(url):
    """No I/O: the classes the other URLs' connections are made of (TLS, Sentinel) keep them too."""
    client = redis_client(url, pool_wait_s=1.0)
    clients = [client, *getattr(client.connection_pool, "sentinel_manager", None).sentinels] \
        if url.startswith("redis+sentinel") else [client]
    for each in clients:
        assert "_KeepsCancels" in [base.__name__ for base in each.connection_pool.connection_class.__mro__]
