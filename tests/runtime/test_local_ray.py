"""The private Ray instance `heavy up` starts (no RAY_ADDRESS) listens on loopback only, and its auth token file is
its owner's alone."""

import ipaddress
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.replica.local_ray import keep_token_private

REPO = Path(__file__).resolve().parents[2]
# Starts the node as `heavy up` does (init_ray), runs one task so that a worker's gRPC server is up too, and prints
# every TCP listener of this process and its descendants (GCS, raylet, agents, monitor, workers).
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
ray.shutdown()
print(json.dumps(listeners))
"""


@pytest.mark.ray
@pytest.mark.slow
def test_the_local_ray_heavy_up_starts_listens_on_loopback_only_with_a_private_token(tmp_path):
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    result = subprocess.run([sys.executable, "-c", LISTENERS_OF_A_LOCAL_NODE], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    listeners = json.loads(result.stdout.splitlines()[-1])
    names = {name for name, _, _ in listeners}
    assert {"gcs_server", "raylet"} <= names, listeners
    beyond_loopback = [(name, ip, port) for name, ip, port in listeners
                       if not ipaddress.ip_address(ip.removeprefix("::ffff:")).is_loopback]
    assert beyond_loopback == []
    token = tmp_path / ".ray" / "auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700


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
