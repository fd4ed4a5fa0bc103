"""The deployment on a real multi-node Ray cluster, on this machine: two Ray nodes (`ray start --head` on 127.0.0.3,
`ray start --address` on 127.0.0.2, one CPU each); `python -m runtime serve --replicas 1 --ep 2` as a driver via
RAY_ADDRESS, its EP = 2 replica of the tiny Kimi K2 checkpoint with one rank on each node; Redis, `heavy serve` and
`heavy worker` (HEAVY_* settings only, the worker reaching the model through the runtime's OpenAI API); a job submitted
through the REST API ends with its report. Then the worker node's Ray processes are SIGKILLed mid-job: the job must
reach a terminal state within a bound — done with real work (the lost rank restarted on the surviving node) or
failed with its error — never hang.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from heavy.embedded_redis import EmbeddedRedis, find_redis_server
from tests.deploy.local_cluster import TwoNodeCluster, process_titles
from tests.net import free_port
from tests.processes import stop_process

pytestmark = [pytest.mark.slow, pytest.mark.ray]

REPO_ROOT = Path(__file__).resolve().parents[2]
HEAVY = str(Path(sys.executable).with_name("heavy"))
TERMINAL = {"done", "partial", "failed", "cancelled"}
# Each node keeps half a CPU busy with a detached actor, so the replica's two 0.5-CPU rank bundles (PACK) can only
# be placed one per node. The head's filler is released once the replica runs: its lost rank can come back there.
FILL = """
import ray
ray.init(namespace="deploy-test")
Filler = ray.remote(num_cpus=0.5)(type("Filler", (), {"ping": lambda self: 1}))
handles = [Filler.options(name=f"fill_{n}", lifetime="detached", resources={n: 0.01}).remote()
           for n in ("node_a", "node_b")]
ray.get([h.ping.remote() for h in handles])
"""
RELEASE_HEAD = """
import ray
ray.init(namespace="deploy-test")
ray.kill(ray.get_actor("fill_node_a"))
"""
JOB = {"question": "What is two plus two?", "mode": "answer", "trajectories": 2, "max_steps": 2, "step_tokens": 16,
       "tools": [], "deadline_s": 120}
JOB_TIMEOUT_S = 300.0


def _wait_http(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{process.args} exited with {process.returncode}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise TimeoutError(f"{url} not up after {timeout_s} s")


class Processes:
    """Child processes of the test, each stopped by its own PID."""

    def __init__(self, log_dir: Path):
        self.log_dir, self.started = log_dir, []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = (self.log_dir / f"{name}.log").open("w")
        process = subprocess.Popen(argv, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        self.started.append(process)
        return process

    def stop(self) -> None:
        for process in reversed(self.started):
            stop_process(process)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, write_tiny_kimi):
    try:
        find_redis_server()
    except Exception as exc:  # noqa: BLE001 - reported as the skip reason
        pytest.skip(f"no redis-server: {exc}")
    tmp = tmp_path_factory.mktemp("deployment")
    checkpoint = write_tiny_kimi(tmp / "tiny-kimi", config_overrides={"max_position_embeddings": 8192})
    cluster = TwoNodeCluster().start()
    processes = Processes(tmp)
    redis = EmbeddedRedis(tmp / "redis")
    try:
        subprocess.run([sys.executable, "-c", FILL], env=cluster.env(), check=True, timeout=120, capture_output=True)
        runtime_port, api_port = free_port(), free_port()
        runtime = processes.start("runtime", [sys.executable, "-m", "runtime", "serve", "--model", str(checkpoint),
                                              "--served-model-name", "tiny-kimi", "--replicas", "1", "--ep", "2",
                                              "--host", "127.0.0.1",
                                              "--port", str(runtime_port)], cluster.env())
        _wait_http(f"http://127.0.0.1:{runtime_port}/health", runtime, timeout_s=600)
        subprocess.run([sys.executable, "-c", RELEASE_HEAD], env=cluster.env(), check=True, timeout=120,
                       capture_output=True)
        redis.start()
        (tmp / "corpus").mkdir()
        (tmp / "corpus" / "arithmetic.md").write_text("# Arithmetic\n\nTwo plus two is four.\n")
        settings = {
            "HEAVY_HOME": str(tmp / "home"), "HEAVY_REDIS_URL": redis.url, "HEAVY_API_HOST": "127.0.0.1",
            "HEAVY_SEARCH": "local", "HEAVY_CORPUS_INDEX": str(tmp / "corpus.sqlite"),
            "HEAVY_API_PORT": str(api_port), "HEAVY_BACKEND": "openai", "HEAVY_MODEL": "tiny-kimi",
            "HEAVY_OPENAI_BASE_URL": f"http://127.0.0.1:{runtime_port}/v1", "HEAVY_CONTEXT_TOKENS": "4096",
            "HEAVY_LLM_MAX_RETRIES": "6", "HEAVY_LLM_BACKOFF_S": "1", "HEAVY_LLM_BACKOFF_MAX_S": "8",
        }
        env = cluster.env() | settings
        subprocess.run([HEAVY, "corpus", "add", str(tmp / "corpus")], env=env, check=True, timeout=120,
                       capture_output=True)
        api = processes.start("api", [HEAVY, "serve"], env)
        processes.start("worker", [HEAVY, "worker"], env)
        _wait_http(f"http://127.0.0.1:{api_port}/readyz", api, timeout_s=60)
        yield cluster, f"http://127.0.0.1:{api_port}", _api_key(redis.url)
    finally:
        processes.stop()
        redis.stop()
        cluster.stop()


def _api_key(redis_url: str) -> str:
    import asyncio

    from heavy.store import Store

    async def create() -> str:
        store = Store.connect(redis_url)
        try:
            return (await store.tenants.create_key("deploy-test")).secret
        finally:
            await store.aclose()

    return asyncio.run(create())


def _submit(api: str, key: str) -> str:
    response = httpx.post(f"{api}/v1/jobs", json=JOB, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def _wait_terminal(api: str, key: str, job_id: str, on_running=None) -> dict:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        job = httpx.get(f"{api}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"}, timeout=30).json()
        if job["status"] in TERMINAL:
            return job
        if on_running is not None and job["status"] == "running":
            on_running()
            on_running = None
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} hung: still {job['status']} after {JOB_TIMEOUT_S} s")


def _actors_per_node(cluster: TwoNodeCluster, actor: str) -> dict[str, int]:
    return {name: sum(title.startswith(f"ray::{actor}") for title in process_titles(node))
            for name, node in cluster.nodes.items()}


def _report(api: str, key: str, job_id: str) -> dict:
    response = httpx.get(f"{api}/v1/jobs/{job_id}/report", timeout=30,
                         headers={"Authorization": f"Bearer {key}", "Accept": "application/json"})
    assert response.status_code == 200, response.text
    return response.json()


def _did_work(report: dict) -> bool:
    """Tokens were generated and at least one trajectory ended without an error."""
    return report["tokens"]["completion"] > 0 and any(t["stop_reason"] != "error" for t in report["trajectories"])


def test_a_job_runs_on_an_ep2_replica_spread_over_two_nodes(deployment):
    cluster, api, key = deployment
    assert _actors_per_node(cluster, "EPRank") == {"node_a": 1, "node_b": 1}
    job = _wait_terminal(api, key, _submit(api, key))
    assert job["status"] == "done", job
    assert _did_work(_report(api, key, job["id"]))


def test_losing_the_worker_node_mid_job_ends_the_job_never_hangs(deployment):
    cluster, api, key = deployment
    placement = {actor: _actors_per_node(cluster, actor) for actor in ("Router", "Replica")}
    job = _wait_terminal(api, key, _submit(api, key), on_running=cluster.nodes["node_b"].kill)
    assert not cluster.nodes["node_b"].pids()
    print(f"router/replica placement {placement}; after losing node_b: {job['status']} {job.get('error') or ''}")
    if job["status"] == "failed":
        assert job["error"], job  # a failed job says why
    else:
        assert job["status"] in ("done", "partial") and _did_work(_report(api, key, job["id"])), job
