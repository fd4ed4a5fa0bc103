"""`heavy up` as a user runs it, with the model replaced by a scripted OpenAI-compatible server on loopback:
embedded Redis, worker and API in one process; a job over REST to its report; Ctrl-C stops everything (no
redis-server left behind); the API key it made is still there for `heavy keys` afterwards (AOF)."""

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest
from typer.testing import CliRunner

from heavy.cli import app
from heavy.config import Settings, get_settings
from heavy.corpus.commands import corpus_add
from heavy.up import with_local_replica
from tests.heavy.test_cli import DOCS, fake_llm, holds  # noqa: F401 (fixtures)
from tests.net import free_port

pytestmark = pytest.mark.slow


def redis_pids(home) -> list[int]:
    found = subprocess.run(["pgrep", "-f", f"redis-server.*{home}"], capture_output=True, text=True).stdout
    return [int(pid) for pid in found.split()]


def test_heavy_up_serves_a_job_end_to_end_and_stops_cleanly(tmp_path_factory, fake_llm, monkeypatch):  # noqa: F811
    base_url, _ = fake_llm
    home = tmp_path_factory.mktemp("up")
    (home / "docs.jsonl").write_text("\n".join(json.dumps(d) for d in DOCS))
    corpus_add(home / "docs.jsonl", home / "corpus.sqlite")
    port, key_file = free_port(), home / "key"
    env = {**os.environ, "HEAVY_HOME": str(home), "HEAVY_BACKEND": "openai", "HEAVY_OPENAI_BASE_URL": base_url,
           "HEAVY_SEARCH": "local"}
    env.pop("HEAVY_REDIS_URL", None)
    up = subprocess.Popen([sys.executable, "-m", "heavy.cli", "up", "--port", str(port), "--index",
                           str(home / "corpus.sqlite"), "--api-key-file", str(key_file)], env=env,
                          stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (key_file.is_file() and _ready(port)):
            assert up.poll() is None and time.monotonic() < deadline, "heavy up did not come up"
            time.sleep(0.1)
        assert redis_pids(home)
        key = key_file.read_text().strip()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}) as client:
            assert "<title>heavy" in client.get("/").text
            job = client.post("/v1/jobs", json={"question": "Who directed Sinister?", "trajectories": 2,
                                                "max_steps": 3, "tools": ["search", "open_page"]}).json()
            while (status := client.get(f"/v1/jobs/{job['id']}").json()["status"]) not in ("done", "partial",
                                                                                           "failed"):
                assert time.monotonic() < deadline + 60
                time.sleep(0.1)
            assert status == "done"
            report = client.get(f"/v1/jobs/{job['id']}/report").json()
            assert report["answer"] == "Scott Derrickson" and report["sources"]
    finally:
        up.send_signal(signal.SIGINT)
        output, _ = up.communicate(timeout=60)
    assert up.returncode == 0, output
    assert f"http://127.0.0.1:{port}/" in output and key in output
    assert not redis_pids(home)

    monkeypatch.setenv("HEAVY_HOME", str(home))
    monkeypatch.delenv("HEAVY_REDIS_URL", raising=False)
    get_settings.cache_clear()
    try:
        listed = CliRunner().invoke(app, ["keys", "list", "local"])
        assert listed.exit_code == 0 and "heavy up" in listed.output, listed.output
        key_id = listed.output.split("│")[1].strip()
        assert CliRunner().invoke(app, ["keys", "revoke", key_id]).exit_code == 0
        created = CliRunner().invoke(app, ["keys", "create", "acme", "--name", "ci", "--max-jobs", "2"])
        assert created.exit_code == 0 and created.output.strip().splitlines()[-1].startswith("hv_")
        assert CliRunner().invoke(app, ["keys", "revoke", "nope"]).exit_code == 1
    finally:
        get_settings.cache_clear()
    assert not redis_pids(home)


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_heavy_up_serves_the_runtime_model_on_one_local_ray_replica_unless_told_otherwise():
    assert with_local_replica(Settings(backend="runtime")).runtime_replicas == 1
    assert with_local_replica(Settings(backend="runtime", runtime_replicas=0)).runtime_replicas == 0
    assert with_local_replica(Settings(backend="runtime", runtime_replicas=2)).runtime_replicas == 2
    assert with_local_replica(Settings(backend="openai")).runtime_replicas is None
    assert Settings(backend="runtime").runtime_replicas is None  # other commands: in process (make_backend: 0)


def _ray_node_pids() -> set[int]:
    found = subprocess.run(["pgrep", "-f", "raylet|gcs_server|ray::"], capture_output=True, text=True).stdout
    return {int(pid) for pid in found.split()}


def _ray_processes_under(pid: int) -> set[int]:
    """The Ray node's processes `pid` started (its process tree): another Ray instance on the machine, started
    meanwhile by another test run, is not ours."""
    return {child.pid for child in psutil.Process(pid).children(recursive=True)} & _ray_node_pids()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.ray
def test_heavy_up_runs_the_real_model_on_a_local_ray_replica_and_leaves_no_ray_behind(tmp_path_factory):
    """The embedded defaults of `make demo`: the runtime backend on one local Ray replica (a rank actor behind the
    router), the real small model, one job over REST; Ray's node goes with `heavy up`."""
    from runtime.embedded import DEFAULT_MODEL, resolve_model

    home = tmp_path_factory.mktemp("up-ray")
    (home / "docs.jsonl").write_text("\n".join(json.dumps(d) for d in DOCS))
    corpus_add(home / "docs.jsonl", home / "corpus.sqlite")
    port, key_file = free_port(), home / "key"
    env = {**os.environ, "HEAVY_HOME": str(home), "HEAVY_BACKEND": "runtime", "HEAVY_SEARCH": "local",
           "HEAVY_MODEL": str(resolve_model(DEFAULT_MODEL)), "HEAVY_CONTEXT_TOKENS": "4096"}
    for name in ("HEAVY_REDIS_URL", "HEAVY_RUNTIME_REPLICAS", "RAY_ADDRESS"):
        env.pop(name, None)
    up = subprocess.Popen([sys.executable, "-m", "heavy.cli", "up", "--port", str(port), "--index",
                           str(home / "corpus.sqlite"), "--api-key-file", str(key_file)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (key_file.is_file() and _ready(port)):
            assert up.poll() is None and time.monotonic() < deadline, "heavy up did not come up"
            time.sleep(0.2)
        assert _ray_processes_under(up.pid)  # a Ray node of its own is up
        key = key_file.read_text().strip()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}) as client:
            job = client.post("/v1/jobs", json={"question": "Who directed Sinister?", "trajectories": 1,
                                                "mode": "answer", "max_steps": 2, "step_tokens": 64,
                                                "tools": ["search"]}).json()
            while (status := client.get(f"/v1/jobs/{job['id']}").json()["status"]) not in ("done", "partial",
                                                                                           "failed"):
                assert time.monotonic() < deadline + 300, "the job did not end"
                time.sleep(0.5)
            assert status in ("done", "partial")
            report = client.get(f"/v1/jobs/{job['id']}/report").json()
            assert report["tokens"]["completion"] > 0 and report["trajectories"][0]["steps"] >= 1
        ours = _ray_processes_under(up.pid)  # its workers too, now that the job ran
    finally:
        up.send_signal(signal.SIGINT)
        output, _ = up.communicate(timeout=120)
    assert up.returncode == 0, output[-3000:]
    assert "1 replica(s) on a local Ray instance" in output
    time.sleep(2)  # the node's processes exit after the driver
    assert not [pid for pid in ours if _alive(pid)], output[-3000:]
