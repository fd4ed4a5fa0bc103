"""A unix-socket proxy in front of a test redis-server, for the network between a store and Redis: cut (the
connections through it broken, new ones refused), pointed at another server (as an address whose DNS name or
virtual IP a failover moved: connections already open stay on the old server), or made to lose one reply."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path


class RedisProxy:
    def __init__(self, socket_path: Path, upstream: str) -> None:
        self.socket_path, self.upstream = str(socket_path), upstream  # upstream: the server's socket path
        self.cut = False
        self.lose_reply_to: bytes | None = None  # a command holding these bytes runs, but its client never hears
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._server: asyncio.AbstractServer | None = None
        self._serving: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    async def __aenter__(self) -> RedisProxy:
        self._server = await asyncio.start_unix_server(self._serve, self.socket_path)
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        self.break_connections()
        await asyncio.gather(*self._serving, return_exceptions=True)
        await self._server.wait_closed()

    def break_connections(self) -> None:
        for client, server in list(self._pairs):
            client.close()
            server.close()
        self._pairs.clear()

    def set_cut(self, cut: bool) -> None:
        self.cut = cut
        if cut:
            self.break_connections()

    async def _serve(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        if self.cut:
            client.close()
            return
        self._serving.add(asyncio.current_task())
        try:
            server_reader, server = await asyncio.open_unix_connection(self.upstream)
        except OSError:  # the server is down: so is the connection through the proxy
            self._serving.discard(asyncio.current_task())
            client.close()
            return
        pair = (client, server)
        self._pairs.add(pair)
        losing = asyncio.Event()  # set once the command whose reply is to be lost went to the server
        try:
            await asyncio.gather(self._pipe(client_reader, server, losing),
                                 self._pipe(server_reader, client, losing, replies=True))
        finally:
            self._serving.discard(asyncio.current_task())
            self._pairs.discard(pair)
            client.close()
            server.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, losing: asyncio.Event, *,
                    replies: bool = False) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if replies and losing.is_set():  # the command ran; its reply is lost with the connection
                    break
                writer.write(data)
                await writer.drain()
                if not replies and self.lose_reply_to is not None and self.lose_reply_to in data:
                    self.lose_reply_to = None
                    losing.set()
        writer.close()
