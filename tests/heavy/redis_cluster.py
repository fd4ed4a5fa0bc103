"""A real Redis Cluster on loopback for tests: three redis-server processes in cluster mode, met with CLUSTER MEET,
the 16384 slots split between them with CLUSTER ADDSLOTSRANGE. Primaries only: enough to put keys on different
shards, which is what cross-slot scripts and commands trip on."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.net import free_port
from tests.processes import stop_process

NODES = 3
SLOTS = 16384
READY_TIMEOUT_S = 30.0


class LocalCluster:
    def __init__(self, binary: str, directory: Path) -> None:
        self.directory = directory
        # a port for clients and one for the cluster bus: the default bus port (port + 10000) may not be free
        self.ports = [(free_port(), free_port()) for _ in range(NODES)]
        self.processes = [self._start(binary, n, port, bus) for n, (port, bus) in enumerate(self.ports)]

    @property
    def url(self) -> str:
        """The store's URL: one node is enough to discover the others."""
        return f"redis+cluster://127.0.0.1:{self.ports[0][0]}"

    def _start(self, binary: str, n: int, port: int, bus: int) -> subprocess.Popen:
        return subprocess.Popen(
            [binary, "--port", str(port), "--cluster-port", str(bus), "--bind", "127.0.0.1", "--cluster-enabled",
             "yes", "--cluster-config-file", str(self.directory / f"nodes-{n}.conf"), "--dir", str(self.directory),
             "--save", "", "--appendonly", "no", "--logfile", str(self.directory / f"node-{n}.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def node(self, n: int) -> Redis:
        return Redis(host="127.0.0.1", port=self.ports[n][0], decode_responses=True, socket_timeout=5)

    def form(self) -> LocalCluster:
        """Join the nodes, give each a third of the slots, and wait until every node says the cluster is ok."""
        nodes = [self.node(n) for n in range(NODES)]
        try:
            self._wait(lambda: all(self._answers(node) for node in nodes), "the nodes did not start")
            first_port, first_bus = self.ports[0]
            for node in nodes[1:]:
                node.execute_command("CLUSTER", "MEET", "127.0.0.1", first_port, first_bus)
            bounds = [SLOTS * n // NODES for n in range(NODES + 1)]
            for n, node in enumerate(nodes):
                node.execute_command("CLUSTER", "ADDSLOTSRANGE", bounds[n], bounds[n + 1] - 1)
            self._wait(lambda: all(node.cluster("info")["cluster_state"] == "ok" for node in nodes),
                       "the cluster did not reach cluster_state:ok")
        finally:
            for node in nodes:
                node.close()
        return self

    @staticmethod
    def _answers(node: Redis) -> bool:
        try:
            return bool(node.ping())
        except RedisConnectionError:  # not listening yet
            return False

    def _wait(self, ready, failure: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready():
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.processes):
                self.stop()
                raise RuntimeError(f"{failure}; logs in {self.directory}")
            time.sleep(0.05)

    def stop(self) -> None:
        for process in self.processes:
            stop_process(process)
