"""deploy/k8s/components/redis-sentinel, rendered in overlays/cpu-ha: HEAVY_REDIS_URL names the sentinels the
component runs, under the name they watch the primary with, and the pods' start-up scripts (from the rendered
ConfigMap, as the pods run them) work against real redis-servers and a real sentinel on loopback: a new deployment's
first pod is the primary, the other replicates it, a pod started once the sentinels watch a primary replicates that
one, and heavy's store reaches the primary through the sentinel with the URL's form."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time

import pytest
from redis import Redis

from heavy.config import Settings
from heavy.embedded_redis import EmbeddedRedisError, find_redis_server
from heavy.store import Keys, Store
from heavy.store.connection import parse_sentinel_url
from tests.deploy.conftest import DEPLOY
from tests.deploy.kustomize import render
from tests.net import free_port
from tests.processes import stop_process

PASSWORD = "s3cret"
READY_TIMEOUT_S = 30


@pytest.fixture(scope="module")
def objects() -> list[dict]:
    return render(DEPLOY / "k8s" / "overlays" / "cpu-ha")


def _one(objects: list[dict], kind: str, name: str) -> dict:
    [found] = [obj for obj in objects if obj["kind"] == kind and obj["metadata"]["name"] == name]
    return found


def _env(container: dict) -> dict[str, str]:
    return {env["name"]: env["value"] for env in container["env"] if "value" in env}


def test_the_store_url_names_the_sentinels_that_run_and_the_primary_they_watch(objects):
    url = _one(objects, "Secret", "heavy-secrets")["stringData"]["HEAVY_REDIS_URL"]
    target = parse_sentinel_url(url)
    sentinels = _one(objects, "StatefulSet", "heavy-redis-sentinel")
    service = _one(objects, "Service", "heavy-redis-sentinel")
    spec = sentinels["spec"]
    pods = [f"heavy-redis-sentinel-{n}.{spec['serviceName']}" for n in range(spec["replicas"])]
    [port] = [entry["port"] for entry in service["spec"]["ports"]]
    assert list(target.sentinels) == [(pod, port) for pod in pods] and len(pods) >= 3  # a quorum of 2 survives one
    assert service["spec"]["clusterIP"] == "None" and sentinels["spec"]["serviceName"] == service["metadata"]["name"]
    scripts = _one(objects, "ConfigMap", "heavy-redis-sentinel-scripts")["data"]
    assert f"sentinel monitor {target.service} " in scripts["sentinel-conf.sh"]
    assert f"get-master-addr-by-name {target.service}" in scripts["redis-role.sh"]
    # the secret's placeholders: one password, the primary's and the sentinels'
    assert target.password == target.sentinel_password == _one(objects, "Secret", "heavy-secrets")["stringData"][
        "REDIS_PASSWORD"]
    redis = _one(objects, "StatefulSet", "heavy-redis")
    assert redis["spec"]["replicas"] == 2
    for container in (redis["spec"]["template"]["spec"]["initContainers"][0],
                      sentinels["spec"]["template"]["spec"]["initContainers"][0]):
        env = _env(container)
        assert env["SENTINELS"].split() == [f"{pod}:{port}" for pod in pods]
        assert env["FIRST_PRIMARY"] == f"heavy-redis-0.{redis['spec']['serviceName']}:6379"
    assert Settings(redis_url=url).redis_url == url


class Loopback:
    """redis-servers and sentinels on 127.0.0.1, stopped at the end."""

    def __init__(self, tmp_path):
        try:
            self.binary = find_redis_server()
        except EmbeddedRedisError as exc:
            pytest.skip(f"needs a redis-server: {exc}")
        if not shutil.which("redis-cli"):
            pytest.skip("the pods' scripts use redis-cli")
        self.tmp, self.processes = tmp_path, []

    def start(self, *args: str) -> int:
        port = free_port()
        process = subprocess.Popen([self.binary, *args, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                    "--dir", str(self.tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.processes.append(process)
        self.wait(lambda: self.ask(port, "PING") is True, f"redis on {port} did not start")
        return port

    def ask(self, port: int, *command: str):
        try:
            with Redis(host="127.0.0.1", port=port, password=PASSWORD, decode_responses=True, socket_timeout=5) as r:
                return r.execute_command(*command)
        except Exception:  # not up yet
            return None

    def wait(self, condition, message: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not condition():
            assert time.monotonic() < deadline, message
            time.sleep(0.1)

    def stop(self) -> None:
        for process in self.processes:
            stop_process(process)


@pytest.fixture
def loopback(tmp_path):
    servers = Loopback(tmp_path)
    yield servers
    servers.stop()


def run_script(objects, name: str, out, **env: str) -> str:
    script = out.parent / name
    script.write_text(_one(objects, "ConfigMap", "heavy-redis-sentinel-scripts")["data"][name])
    done = subprocess.run(["sh", str(script), str(out)], env={"PATH": os.environ["PATH"], "REDIS_PASSWORD": PASSWORD,
                                                                **env}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return out.read_text()


def test_the_pods_scripts_make_a_primary_a_replica_and_a_sentinel_heavy_reaches_the_primary_through(objects,
                                                                                                   loopback, tmp_path):
    nobody = f"127.0.0.1:{free_port()}"  # no sentinel answers there: a new deployment
    first = run_script(objects, "redis-role.sh", tmp_path / "first.conf", ANNOUNCE_HOST="127.0.0.1",
                       SENTINELS=nobody, FIRST_PRIMARY="127.0.0.1:6379")
    assert "replicaof" not in first and "replica-announce-ip 127.0.0.1" in first
    primary = loopback.start(str(tmp_path / "first.conf"), "--requirepass", PASSWORD, "--masterauth", PASSWORD)
    second = run_script(objects, "redis-role.sh", tmp_path / "second.conf", ANNOUNCE_HOST="localhost",
                        SENTINELS=nobody, FIRST_PRIMARY=f"127.0.0.1:{primary}")
    assert f"replicaof 127.0.0.1 {primary}" in second

    sentinel_port = free_port()
    run_script(objects, "sentinel-conf.sh", tmp_path / "sentinel.conf", ANNOUNCE_HOST="127.0.0.1",
               SENTINELS=f"127.0.0.1:{sentinel_port} {nobody}", FIRST_PRIMARY=f"127.0.0.1:{primary}",
               SENTINEL_PORT=str(sentinel_port))
    sentinel = subprocess.Popen([loopback.binary, str(tmp_path / "sentinel.conf"), "--sentinel"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    loopback.processes.append(sentinel)
    loopback.wait(lambda: loopback.ask(sentinel_port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "heavy") ==
                  ["127.0.0.1", str(primary)], "the sentinel does not watch the primary")

    # a pod (re)started now replicates the primary the sentinel names, FIRST_PRIMARY or not
    later = run_script(objects, "redis-role.sh", tmp_path / "later.conf", ANNOUNCE_HOST="localhost",
                       SENTINELS=f"127.0.0.1:{sentinel_port}", FIRST_PRIMARY="127.0.0.1:1")
    assert f"replicaof 127.0.0.1 {primary}" in later
    replica = loopback.start(str(tmp_path / "later.conf"), "--requirepass", PASSWORD, "--masterauth", PASSWORD)
    loopback.wait(lambda: (loopback.ask(replica, "INFO", "replication") or {}).get("master_link_status") == "up",
                  "the replica did not sync with the primary")

    async def through_the_sentinel() -> str:
        url = f"redis+sentinel://:{PASSWORD}@127.0.0.1:{sentinel_port}/heavy/0?sentinel_password={PASSWORD}"
        store = Store.connect(url, Settings(), Keys("t-sentinel:"))
        try:
            key = await store.tenants.create_key("acme", "k8s")
            return await store.tenants.resolve(key.secret)
        finally:
            await store.aclose()
    assert asyncio.run(through_the_sentinel()) == "acme"
    assert loopback.ask(primary, "EXISTS", "t-sentinel:tenants") == 1
