"""The private Ray instance `heavy up` starts (no RAY_ADDRESS) listens on loopback only, and its auth token file and
its sessions' folder (logs, sockets) are its owner's alone."""

import ipaddress
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from runtime.replica.local_ray import SOCKET_PATH_MAX, keep_token_private, private_temp_dir

REPO = Path(__file__).resolve().parents[2]
# Starts the node as `heavy up` does (init_ray), runs one task so that a worker's gRPC server is up too, and prints
# every TCP listener of this process and its descendants (GCS, raylet, agents, monitor, workers), then its session's
# folder and unix sockets.
LISTENERS_OF_A_LOCAL_NODE = """
import json, psutil, ray
from runtime.replica.serving import init_ray
assert init_ray()
assert ray.get(ray.remote(lambda: 1).remote()) == 1
here = psutil.Process()
listeners = []
for process in [here, *here.children(recursive=True)]:
    try:
        sockets = process.net_connections(kind="tcp")
        name = process.name()
    except psutil.NoSuchProcess:
        continue
    listeners += [[name, s.laddr.ip, s.laddr.port] for s in sockets if s.status == psutil.CONN_LISTEN]
node = ray._private.worker._global_node
session = [node.get_session_dir_path(), node.plasma_store_socket_name, node.raylet_socket_name]
ray.shutdown()
print(json.dumps(listeners))
print(json.dumps(session))
"""


# `runtime serve --replicas`'s start (JSON lines, then init_ray), a task that prints to stdout and stderr, and three
# actors that print one same line (each then a line of its own); it waits until all these reached its handlers
# from the workers, then stops Ray, within Ray's window for counting a repeated line (RAY_DEDUP_LOGS_AGG_WINDOW_S).
JSON_LINES_OF_A_LOCAL_NODE = """
import logging, os, sys, time, ray
from ray._private.ray_logging import global_worker_stdstream_dispatcher
from runtime.replica.serving import init_ray
from runtime.server.logs import log_json_lines
log_json_lines()
assert init_ray()
forwarded = []
handler = logging.Handler()
handler.emit = lambda record: forwarded.append(record.getMessage())
logging.getLogger("ray.worker_output").addHandler(handler)
@ray.remote
def speak():
    print("said-on-stdout")
    print("said-on-stderr", file=sys.stderr)
@ray.remote(num_cpus=0)
class Rank:
    def ready(self):
        return True
    def say(self):
        print("said-by-three")
        print(f"own-{os.getpid()}")
ray.get(speak.remote())
ranks = [Rank.remote() for _ in range(3)]
ray.get([rank.ready.remote() for rank in ranks])
ray.get([rank.say.remote() for rank in ranks])
global_worker_stdstream_dispatcher.emit({  # what the monitor sends every 5 s: not an event
    "pid": "autoscaler", "ip": "127.0.0.1", "is_err": False,
    "lines": ["======== Autoscaler status: 2026-12-07 23:30:27 ========", "Node status"]})
def heard(said, times=1):
    return sum(said in line for line in forwarded) >= times
deadline = time.monotonic() + 120
while time.monotonic() < deadline and not (heard("said-on-stdout") and heard("said-on-stderr") and heard("own-", 3)):
    time.sleep(0.1)
ray.shutdown()
"""


def _own_ray_env(home: Path, heavy_home: Path) -> dict[str, str]:
    """A process that starts a Ray of its own (no RAY_ADDRESS), its token in `home`, its sessions in `heavy_home`."""
    return {"HOME": str(home), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0",
            "HEAVY_HOME": str(heavy_home)}


@pytest.fixture
def short_tmp():
    """A folder with a short path (pytest's tmp_path leaves too few of a unix socket path's 107 bytes to Ray)."""
    folder = Path(tempfile.mkdtemp(prefix="rt-"))
    yield folder
    shutil.rmtree(folder)


@pytest.mark.ray
@pytest.mark.slow
def test_the_local_ray_heavy_up_starts_listens_on_loopback_only_with_a_private_token_and_sessions(tmp_path,
                                                                                                   short_tmp):
    heavy_home = short_tmp / "heavy"
    result = subprocess.run([sys.executable, "-c", LISTENERS_OF_A_LOCAL_NODE], capture_output=True, text=True,
                            env=_own_ray_env(tmp_path, heavy_home), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    listeners = json.loads(result.stdout.splitlines()[-2])
    names = {name for name, _, _ in listeners}
    assert {"gcs_server", "raylet"} <= names, listeners
    beyond_loopback = [(name, ip, port) for name, ip, port in listeners
                       if not ipaddress.ip_address(ip.removeprefix("::ffff:")).is_loopback]
    assert beyond_loopback == []
    token = tmp_path / ".ray" / "auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    # Ray's default was /tmp/ray, which Ray makes 0777 (as every folder it creates): logs readable by every user
    session, *sockets = json.loads(result.stdout.splitlines()[-1])
    private = heavy_home / "ray"
    assert all(Path(path).is_relative_to(private / "tmp") for path in (session, *sockets)), (session, sockets)
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    assert not (Path("/tmp/ray") / Path(session).name).exists()


@pytest.fixture
def token_from_the_default_file(monkeypatch):
    """Ray's default: token auth on, its token read from ~/.ray/auth_token."""
    for variable in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(variable, raising=False)


@pytest.mark.usefixtures("token_from_the_default_file")
def test_a_token_file_ray_wrote_readable_by_others_is_made_private(tmp_path):
    token = tmp_path / "auth_token"
    token.write_text("0" * 64)
    token.chmod(0o644)
    keep_token_private(token)
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and token.read_text() == "0" * 64


def test_no_token_file_is_written_when_ray_takes_its_token_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "a" * 64)
    keep_token_private(tmp_path / ".ray" / "auth_token")
    assert not (tmp_path / ".ray").exists()


@pytest.mark.usefixtures("token_from_the_default_file")
def test_a_missing_token_is_written_whole_and_private_in_a_private_folder(tmp_path):
    token = tmp_path / ".ray" / "auth_token"
    keep_token_private(token)
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    assert len(token.read_text()) == 64 and [p.name for p in token.parent.iterdir()] == ["auth_token"]


def test_a_heavy_home_too_deep_for_rays_socket_paths_gets_a_private_folder_in_the_temp_dir(short_tmp, monkeypatch):
    """Ray refuses a socket path past 107 bytes: its sessions then go to heavy-ray-<uid> in the temp dir, 0700."""
    deep = short_tmp / ("d" * (SOCKET_PATH_MAX - len(str(short_tmp))))
    monkeypatch.setenv("HEAVY_HOME", str(deep))
    monkeypatch.setattr("tempfile.tempdir", str(short_tmp))
    private = short_tmp / f"heavy-ray-{os.getuid()}"
    assert private_temp_dir() == private / "tmp" and not (deep / "ray").exists()
    assert stat.S_IMODE(private.stat().st_mode) == 0o700


def test_a_temp_folder_of_that_name_that_is_a_link_is_not_used(short_tmp, monkeypatch):
    """Another user may make /tmp/heavy-ray-<uid> first (a link to a folder they read): a fresh folder instead."""
    monkeypatch.setenv("HEAVY_HOME", str(short_tmp / ("d" * (SOCKET_PATH_MAX - len(str(short_tmp))))))
    monkeypatch.setattr("tempfile.tempdir", str(short_tmp))
    (short_tmp / "theirs").mkdir()
    os.chmod(short_tmp / "theirs", 0o777)
    (short_tmp / f"heavy-ray-{os.getuid()}").symlink_to(short_tmp / "theirs")
    temp_dir = private_temp_dir()
    assert temp_dir.parent.parent == short_tmp and temp_dir.parent.name.startswith("heavy-ray-")
    assert not temp_dir.parent.is_symlink() and stat.S_IMODE(temp_dir.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((short_tmp / "theirs").stat().st_mode) == 0o777


def test_a_private_folder_an_earlier_start_left_open_is_closed(short_tmp, monkeypatch):
    monkeypatch.setenv("HEAVY_HOME", str(short_tmp))
    (short_tmp / "ray").mkdir()
    os.chmod(short_tmp / "ray", 0o755)
    assert private_temp_dir() == short_tmp / "ray" / "tmp"
    assert stat.S_IMODE((short_tmp / "ray").stat().st_mode) == 0o700


def test_every_private_ray_instance_the_repository_starts_goes_through_start_local_ray():
    """Ray's own `_node_ip_address` loopback start listens on every interface, leaves its token 0644 and its
    sessions in a 0777 /tmp/ray (local_ray.py's docstring): a test fixture and a benchmark starting Ray so did it
    still after heavy up no longer did."""
    own_start = re.compile(r"ray\.init\([^)]*address=[\"']local[\"']")
    starts = sorted(str(path.relative_to(REPO)) for folder in ("heavy", "runtime", "scripts", "tests")
                    for path in (REPO / folder).rglob("*.py") if own_start.search(path.read_text(encoding="utf-8")))
    assert starts == ["runtime/replica/local_ray.py"]


@pytest.mark.ray
@pytest.mark.slow
def test_a_process_logging_json_lines_gets_rays_lines_and_its_workers_output_as_json_lines(tmp_path, short_tmp):
    """Ray's own lines (its auth-token warning, its start) had a plain-text handler of Ray's, and the lines a worker
    printed came out as Ray's plain `(speak pid=...) ...`: neither parsed in a log pipeline. A line three workers
    printed is logged once, then with its count as a field: ray.shutdown printed it as plain text."""
    env = {**_own_ray_env(tmp_path, short_tmp / "heavy"), "RAY_DEDUP_LOGS_AGG_WINDOW_S": "600"}
    result = subprocess.run([sys.executable, "-c", JSON_LINES_OF_A_LOCAL_NODE], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (result.stdout + result.stderr).splitlines()]
    forwarded = [r for r in records if r["logger"] == "ray.worker_output"]
    said = {r["msg"].rsplit(" ", 1)[-1]: r["level"] for r in forwarded if "said-on" in r["msg"]}
    assert said == {"said-on-stdout": "INFO", "said-on-stderr": "WARNING"}, records
    by_three = [r for r in forwarded if "said-by-three" in r["msg"]]
    assert [r.get("repeated") for r in by_three] == [None, 2], records
    assert "said-by-three [repeated 2x across cluster]" in by_three[1]["msg"] and "\x1b" not in by_three[1]["msg"]
    assert any("Started a local Ray instance" in r["msg"] for r in records), records
    assert not any("Autoscaler status" in r["msg"] or "Node status" in r["msg"] for r in records), records
