"""The job store over Redis Sentinel (`redis+sentinel://`): real redis-server processes on loopback, a primary, a
replica and a sentinel; the primary killed, the replica promoted, and the store goes on with what it wrote."""

import asyncio
import subprocess
import time

import pytest
from redis.asyncio import Redis

from heavy.config import Settings
from heavy.embedded_redis import EmbeddedRedisError, find_redis_server
from heavy.store import Keys, Store
from heavy.store.connection import SentinelTarget, parse_sentinel_url
from tests.net import free_port

pytestmark = pytest.mark.anyio
SERVICE = "heavy-primary"
FAILOVER_S = 30


def test_sentinel_urls_name_the_sentinels_the_service_the_db_and_the_passwords():
    assert parse_sentinel_url("redis+sentinel://:s3cret@a:26380,b,10.0.0.3:26381/heavy/2?sentinel_password=x") == \
        SentinelTarget((("a", 26380), ("b", 26379), ("10.0.0.3", 26381)), "heavy", 2, None, "s3cret", "x")
    assert parse_sentinel_url("redis+sentinel://s1/heavy") == SentinelTarget((("s1", 26379),), "heavy")
    assert parse_sentinel_url("redis+sentinel://[::1]:26380,[fd00::2]/heavy").sentinels == (
        ("::1", 26380), ("fd00::2", 26379))
    for bad in ("redis+sentinel://s1", "redis+sentinel:///heavy", "redis+sentinel://s1/heavy/x",
                "redis+sentinel://s1:port/heavy", "redis+sentinel://:26379/heavy"):
        with pytest.raises(ValueError, match="sentinel"):
            parse_sentinel_url(bad)


class Servers:
    """A primary, its replica and one sentinel (quorum 1), each its own redis-server process."""

    def __init__(self, tmp_path):
        try:
            self.binary = find_redis_server()
        except EmbeddedRedisError as exc:
            pytest.skip(f"needs a redis-server: {exc}")
        self.tmp = tmp_path
        self.primary_port, self.replica_port, self.sentinel_port = free_port(), free_port(), free_port()
        common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.primary = self._start("primary", ["--port", str(self.primary_port), *common])
        self.replica = self._start("replica", ["--port", str(self.replica_port), *common,
                                               "--replicaof", "127.0.0.1", str(self.primary_port)])
        config = self.tmp / "sentinel.conf"  # the sentinel rewrites it: its own file
        config.write_text(f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {self.tmp}\n"
                          f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary_port} 1\n"
                          f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                          f"sentinel failover-timeout {SERVICE} 5000\n")
        self.sentinel = self._start("sentinel", [str(config), "--sentinel"])

    def _start(self, name, args):
        log = (self.tmp / f"{name}.log").open("w")
        return subprocess.Popen([self.binary, *args], cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT)

    async def ask_sentinel(self, *command):
        sentinel = Redis(host="127.0.0.1", port=self.sentinel_port, decode_responses=True)
        try:
            return await sentinel.execute_command("SENTINEL", *command)
        finally:
            await sentinel.aclose()

    async def primary_address(self):
        return await self.ask_sentinel("get-master-addr-by-name", SERVICE)

    async def replica_known(self) -> bool:
        """The sentinel has found the replica (it reads the primary's INFO every 10 s): only then can it fail over."""
        replicas = await self.ask_sentinel("replicas", SERVICE)
        rows = [dict(zip(r[::2], r[1::2], strict=True)) if isinstance(r, list) else r for r in replicas]
        return any(str(row.get("port")) == str(self.replica_port) and "down" not in row.get("flags", "")
                   and row.get("master-link-status") == "ok" for row in rows)

    def stop(self):
        for process in (self.primary, self.replica, self.sentinel):
            process.kill()
            process.wait()


@pytest.fixture
async def servers(tmp_path):
    servers = Servers(tmp_path)
    yield servers
    servers.stop()


async def wait_until(predicate, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if await predicate():
                return
        except (ConnectionError, OSError):  # a server still starting
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError(f"not within {timeout_s} s")


async def test_the_store_goes_on_on_the_promoted_replica_after_its_primary_dies(servers):
    await wait_until(servers.replica_known, 30)
    store = Store.connect(f"redis+sentinel://127.0.0.1:{servers.sentinel_port}/{SERVICE}", Settings(), Keys("t:"))
    try:
        key = await store.tenants.create_key("acme")
        job, _ = await store.jobs.submit("acme", question="q", mode="report", params={"trajectories": 1})
        await store.jobs.append_event(job.id, {"type": "job_started"})
        assert await store.redis.execute_command("WAIT", 1, 10_000) == 1  # the replica holds all of it

        servers.primary.kill()
        servers.primary.wait()

        async def promoted():
            return (await servers.primary_address()) == ["127.0.0.1", str(servers.replica_port)]
        await wait_until(promoted, FAILOVER_S)

        assert (await store.jobs.get(job.id, "acme")).question == "q"  # read from the new primary
        assert await store.tenants.resolve(key.secret) == "acme"
        again, _ = await store.jobs.submit("acme", question="q2", mode="report", params={"trajectories": 1})
        page, total = await store.jobs.list("acme")
        assert total == 2 and [j.id for j in page] == [again.id, job.id]  # and writes go there too
    finally:
        await store.aclose()
