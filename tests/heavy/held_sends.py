"""Forcing the moment Python 3.11 loses a cancel inside a Redis command, instead of hoping a random cancel hits it.

redis-py sends a command under asyncio.wait_for (its socket_timeout), and 3.11's wait_for returns the send's result
and drops a cancel that arrives as the send completes (CPython gh-86296). `hold_send_until_cancelled` holds one
command's send, as a slow Redis would, until the task sending it is cancelled, then lets it complete in the same
loop round: the cancel lands exactly in that window, whoever sends it (a test, the scheduler, a worker stopping)."""

from __future__ import annotations

import asyncio
from contextvars import ContextVar

from redis.asyncio.cluster import RedisCluster

from heavy.store.connection import RedisClient

_SENDER: ContextVar[asyncio.Task | None] = ContextVar("sender", default=None)  # seen by wait_for's inner task too


def _connection_class(client: RedisClient) -> type:
    if isinstance(client, RedisCluster):
        return client.connection_kwargs["connection_class"]
    return client.connection_pool.connection_class


def hold_send_until_cancelled(monkeypatch, client: RedisClient, *needles: bytes) -> asyncio.Event:
    """Hold the send of `client`'s first command holding all of `needles` (bytes of the command as sent) until the
    task sending it is being cancelled; the Event returned is set once it is held."""
    cls = _connection_class(client)
    send, send_packed = cls.send_packed_command, cls._send_packed_command
    held = asyncio.Event()

    async def send_noting_the_sender(self, command, check_health=True):
        sender = _SENDER.set(asyncio.current_task())
        try:
            await send(self, command, check_health)
        finally:
            _SENDER.reset(sender)

    async def send_then_hold(self, command):  # runs in the task wait_for made for the send
        await send_packed(self, command)
        packed = b"".join(command)
        if held.is_set() or not all(needle in packed for needle in needles):
            return
        held.set()
        sender = _SENDER.get()
        while not sender.cancelling():  # a zero sleep: sent within the loop round that delivers the cancel
            await asyncio.sleep(0)

    monkeypatch.setattr(cls, "send_packed_command", send_noting_the_sender)
    monkeypatch.setattr(cls, "_send_packed_command", send_then_hold)
    return held
