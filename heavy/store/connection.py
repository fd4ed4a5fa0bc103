"""Redis clients from HEAVY_REDIS_URL: one server (`redis://`, `rediss://`, `unix://`), a primary watched by
Redis Sentinel, `redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]` (port 26379 unless
given; `?sentinel_password=` when the sentinels want one of their own), or a Redis Cluster,
`redis+cluster://[[user]:password@]host[:port][,host[:port]...]` (`rediss+cluster://` over TLS; port 6379 unless
given; any of its nodes: the client learns the others from them).

With Sentinel the client asks the sentinels where the primary is, and asks again when a connection to it fails:
after a failover the replica they promoted takes the writes, and the job store's retries ride out the seconds that
takes. On a cluster the job store puts all its keys in one hash slot (`Keys.on_one_slot`), so its multi-key scripts
and transactions stay atomic: its state lives on one shard, which the cluster fails over to a replica."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379
CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}  # scheme -> TLS
REDIS_PORT = 6379
POOL_CONNECTIONS = 100  # per client (redis-py's default); a command past them waits for one (`pool_wait_s`)

RedisClient = Redis | RedisCluster  # what redis_client returns; both speak the commands the store sends
# what a failed command raises: a cluster none of whose nodes answers raises RedisClusterException, no RedisError
REDIS_FAILURES = (RedisError, RedisClusterException)


@dataclass(frozen=True)
class SentinelTarget:
    sentinels: tuple[tuple[str, int], ...]
    service: str  # the name the sentinels monitor the primary under
    db: int = 0
    username: str | None = None
    password: str | None = None  # the primary's and its replicas'
    sentinel_password: str | None = None


@dataclass(frozen=True)
class ClusterTarget:
    nodes: tuple[tuple[str, int], ...]  # some of the cluster's nodes, to discover it from
    username: str | None = None
    password: str | None = None
    tls: bool = False


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def parse_cluster_url(url: str) -> ClusterTarget:
    parts = urlsplit(url)
    if parts.scheme not in CLUSTER_SCHEMES:
        raise ValueError(f"not a redis+cluster:// URL: {url!r}")
    username, password, hosts = _credentials_and_hosts(parts.netloc)
    nodes = tuple(_host_port(entry, url, REDIS_PORT) for entry in hosts.split(",") if entry)
    if not nodes or parts.path.strip("/") or parts.query:  # a cluster has only db 0
        raise ValueError(f"expected redis+cluster://[:password@]host[:port][,...], got {url!r}")
    return ClusterTarget(nodes, unquote(username) or None, unquote(password) or None, CLUSTER_SCHEMES[parts.scheme])


def parse_sentinel_url(url: str) -> SentinelTarget:
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        raise ValueError(f"not a {SENTINEL_SCHEME}:// URL: {url!r}")
    username, password, hosts = _credentials_and_hosts(parts.netloc)
    sentinels = tuple(_host_port(entry, url, SENTINEL_PORT) for entry in hosts.split(",") if entry)
    path = [segment for segment in parts.path.split("/") if segment]
    if not sentinels or not 1 <= len(path) <= 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"expected {SENTINEL_SCHEME}://[:password@]host[:port][,...]/service[/db], got {url!r}")
    query = parse_qs(parts.query)
    return SentinelTarget(sentinels, unquote(path[0]), int(path[1]) if len(path) == 2 else 0,
                          unquote(username) or None, unquote(password) or None,
                          query.get("sentinel_password", [None])[0])


def _credentials_and_hosts(netloc: str) -> tuple[str, str, str]:
    """`[user[:password]@]hosts` -> (user, password, hosts), each '' when absent (still percent-encoded)."""
    credentials, _, hosts = netloc.rpartition("@")
    username, _, password = credentials.partition(":")
    return username, password, hosts


def _host_port(entry: str, url: str, default_port: int) -> tuple[str, int]:
    if entry.startswith("["):  # an IPv6 address, [::1] or [::1]:26380
        host, _, port = entry[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = entry.rpartition(":") if ":" in entry else (entry, "", "")
    if not host or (port and not port.isdigit()):
        raise ValueError(f"bad address {entry!r} in {url!r}")
    return host, int(port) if port else default_port


class _KeepsCancels:
    """Mixed into every connection of redis_client's clients. redis-py sends a command under asyncio.wait_for (its
    socket_timeout, 5 s by default), and Python 3.11's wait_for returns the send's result and drops a cancel that
    arrives as the send completes (CPython gh-86296, fixed in 3.12): the cancelled task read the reply and ran on
    (most cancels of a task busy with Redis commands were lost). The send raises the cancel instead, dropping the
    connection as redis-py does on a cancel mid-send: the command's reply is unread."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        task = asyncio.current_task()
        cancels = task.cancelling()
        await super().send_packed_command(command, check_health)
        if task.cancelling() > cancels:  # cancelled during the send, and no CancelledError came out of it
            await self.disconnect(nowait=True)
            raise asyncio.CancelledError


@functools.cache
def _keeping_cancels(connection_class: type) -> type:
    return type(connection_class.__name__, (_KeepsCancels, connection_class), {})


def _keep_cancels(client: RedisClient) -> RedisClient:
    """`client` with its connections (made on first use) _KeepsCancels, whichever class its URL chose for them (TCP,
    TLS, unix socket, Sentinel-managed); a Sentinel client's connections to the sentinels too."""
    if isinstance(client, RedisCluster):  # its nodes' connections are made from its kwargs, the first nodes' now
        kwargs = client.connection_kwargs
        kwargs["connection_class"] = _keeping_cancels(kwargs["connection_class"])
        for node in client.startup_nodes:
            node.connection_class = kwargs["connection_class"]
        return client
    pool = client.connection_pool
    pool.connection_class = _keeping_cancels(pool.connection_class)
    for sentinel in getattr(getattr(pool, "sentinel_manager", None), "sentinels", ()):
        _keep_cancels(sentinel)
    return client


class BlockingSentinelConnectionPool(SentinelConnectionPool, BlockingConnectionPool):
    """The primary's connections as Sentinel finds them, and a command waits for a free one as in a
    BlockingConnectionPool (SentinelConnectionPool overrides neither getting nor releasing a connection)."""


# Set in a task while it holds a turn of a WaitingRedisCluster: a pipeline retrying a redirected command through
# the client's execute_command takes no second turn (all turns held by such pipelines would wait on each other).
_HOLDS_TURN: ContextVar[bool] = ContextVar("holds_turn", default=False)


class WaitingRedisCluster(RedisCluster):
    """A RedisCluster whose commands and pipelines beyond `connections` at once wait up to `wait_s` for one of them
    to end (then fail as a ConnectionError, as a BlockingConnectionPool's), instead of failing at once with "Too many
    connections": redis-py's cluster nodes have no pool that waits. A command or pipeline takes at most one
    connection per node, so no node is asked for more than `connections`."""

    def __init__(self, *args: Any, connections: int, wait_s: float, **kwargs: Any) -> None:
        super().__init__(*args, max_connections=connections, **kwargs)
        self._turns, self._wait_s = asyncio.Semaphore(connections), wait_s

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        if _HOLDS_TURN.get():
            yield
            return
        try:
            async with asyncio.timeout(self._wait_s):
                await self._turns.acquire()
        except TimeoutError:
            raise RedisConnectionError("No connection available.") from None
        held = _HOLDS_TURN.set(True)
        try:
            yield
        finally:
            _HOLDS_TURN.reset(held)
            self._turns.release()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.turn():
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        if shard_hint:  # as RedisCluster.pipeline
            return super().pipeline(transaction, shard_hint)
        return _WaitingClusterPipeline(self, transaction)


class _WaitingClusterPipeline(ClusterPipeline):
    """A pipeline of a WaitingRedisCluster: it runs in one of the client's turns."""

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        async with self.cluster_client.turn():
            return await super().execute(raise_on_error, allow_redirections)


def redis_client(url: str, *, pool_wait_s: float | None = None, **options: Any) -> RedisClient:
    """A client over `url` (see the module docstring); `options` are the connections' (decode_responses, timeouts,
    retry ...). No I/O until first use.

    With `pool_wait_s`, a command that finds all POOL_CONNECTIONS in use waits up to that long for one to be
    released (then fails as a ConnectionError) instead of failing at once with "Too many connections": a burst of
    requests to an API process (hundreds of clients opening event streams at once) then queues for a moment rather
    than failing. On a cluster the client waits for a turn instead (WaitingRedisCluster). Its commands keep a cancel
    that Python 3.11 would lose (_KeepsCancels)."""
    return _keep_cancels(_client(url, pool_wait_s, **options))


def _client(url: str, pool_wait_s: float | None, **options: Any) -> RedisClient:
    if is_cluster_url(url):
        cluster = parse_cluster_url(url)
        nodes = {"startup_nodes": [ClusterNode(host, port) for host, port in cluster.nodes],
                 "username": cluster.username, "password": cluster.password, "ssl": cluster.tls}
        if pool_wait_s is not None:
            return WaitingRedisCluster(connections=POOL_CONNECTIONS, wait_s=pool_wait_s, **nodes, **options)
        return RedisCluster(**nodes, **options)
    waiting = {"max_connections": POOL_CONNECTIONS, "timeout": pool_wait_s} if pool_wait_s is not None else {}
    if urlsplit(url).scheme != SENTINEL_SCHEME:
        if waiting:
            return Redis.from_pool(BlockingConnectionPool.from_url(url, **waiting, **options))
        return Redis.from_url(url, **options)
    target = parse_sentinel_url(url)
    timeouts = {name: options[name] for name in ("socket_timeout", "socket_connect_timeout") if name in options}
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs={"password": target.sentinel_password, **timeouts})
    if waiting:
        options = {"connection_pool_class": BlockingSentinelConnectionPool, **waiting, **options}
    return sentinel.master_for(target.service, db=target.db, username=target.username, password=target.password,
                               **options)
