"""A real Redis Cluster on loopback for tests: three redis-server processes in cluster mode, met with CLUSTER MEET,
the 16384 slots split between them with CLUSTER ADDSLOTSRANGE; a replica of one of them when a test fails it over.
Enough to put keys on different shards, which is what cross-slot scripts and commands trip on."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.net import free_port
from tests.processes import stop_process

PRIMARIES = 3
SLOTS = 16384
READY_TIMEOUT_S = 30.0
START_ATTEMPTS = 3


class LocalCluster:
    def __init__(self, binary: str, directory: Path, node_timeout_ms: int = 15_000) -> None:
        """`node_timeout_ms`: how long a node is unreachable before the others fail it over (Redis's default)."""
        self.binary, self.directory, self.node_timeout_ms = binary, directory, node_timeout_ms
        # per node, a port for clients and one for the cluster bus (port + 10000, the default, may not be free)
        self.ports: list[tuple[int, int]] = []
        self.processes: list[subprocess.Popen] = []
        for _ in range(PRIMARIES):
            self._start()

    @property
    def url(self) -> str:
        """The store's URL: one node is enough to discover the others."""
        return f"redis+cluster://127.0.0.1:{self.ports[0][0]}"

    def _start(self) -> int:
        """A new node, up but not in the cluster yet; its index. Ports are picked free, but another process may
        take one before the node binds it: the node then exits, and is started again on others."""
        n = len(self.ports)
        config = self.directory / f"nodes-{n}.conf"
        for _ in range(START_ATTEMPTS):
            config.unlink(missing_ok=True)
            port, bus = free_port(), free_port()
            process = subprocess.Popen(
                [self.binary, "--port", str(port), "--cluster-port", str(bus), "--bind", "127.0.0.1",
                 "--cluster-enabled", "yes", "--cluster-config-file", str(config), "--cluster-node-timeout",
                 str(self.node_timeout_ms), "--dir", str(self.directory), "--save", "", "--appendonly", "no",
                 "--logfile", str(self.directory / f"node-{n}.log")],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.ports.append((port, bus))
            self.processes.append(process)
            deadline = time.monotonic() + READY_TIMEOUT_S
            while process.poll() is None and not _served_by(port, process.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _served_by(port, process.pid):
                return n
            stop_process(process)
            self.ports.pop()
            self.processes.pop()
        self.stop()
        raise RuntimeError(f"node {n} did not start; its log is in {self.directory}")

    def node(self, n: int) -> Redis:
        return Redis(host="127.0.0.1", port=self.ports[n][0], decode_responses=True, socket_timeout=5)

    def form(self) -> LocalCluster:
        """Join the nodes, give each a third of the slots, and wait until every node says the cluster is ok."""
        self._join(range(PRIMARIES))
        bounds = [SLOTS * n // PRIMARIES for n in range(PRIMARIES + 1)]
        for n in range(PRIMARIES):
            with self.node(n) as node:
                node.execute_command("CLUSTER", "ADDSLOTSRANGE", bounds[n], bounds[n + 1] - 1)
        self._wait(lambda: all("cluster_state:ok" in self._ask(n, "CLUSTER", "INFO") for n in range(PRIMARIES)),
                   "the cluster did not reach cluster_state:ok")
        return self

    def add_replica(self, primary_port: int) -> int:
        """A new node replicating the primary on `primary_port`, in sync with it; its port."""
        n = self._start()
        self._join([n])
        primary = next(i for i, (port, _) in enumerate(self.ports) if port == primary_port)
        primary_id = self._ask(primary, "CLUSTER", "MYID")
        self._wait(lambda: primary_id in self._ask(n, "CLUSTER", "NODES"), "the replica did not learn its primary")
        self._ask(n, "CLUSTER", "REPLICATE", primary_id)
        self._wait(lambda: self._ask(n, "INFO", "replication").get("master_link_status") == "up",
                   "the replica did not sync")
        replica_id = self._ask(n, "CLUSTER", "MYID")
        self._wait(lambda: all(f"{replica_id} " in self._ask(i, "CLUSTER", "NODES") for i in range(PRIMARIES)),
                   "the primaries did not learn the replica (they elect it when its primary fails)")
        return self.ports[n][0]

    def is_primary(self, port: int) -> bool:
        """The node on `port` is a primary that the cluster it sees is ok with."""
        n = next(i for i, (p, _) in enumerate(self.ports) if p == port)
        return self._ask(n, "INFO", "replication").get("role") == "master" and \
            "cluster_state:ok" in self._ask(n, "CLUSTER", "INFO")

    def _join(self, nodes) -> None:
        first_port, first_bus = self.ports[0]
        for n in nodes:
            if n:
                self._ask(n, "CLUSTER", "MEET", "127.0.0.1", first_port, first_bus)

    def _ask(self, n: int, *command):
        """A command's reply on node `n` (CLUSTER's as the text the server sent, INFO's as a dict)."""
        with self.node(n) as node:
            return node.execute_command(*command)

    def _wait(self, ready, failure: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready():
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.processes):
                self.stop()
                raise RuntimeError(f"{failure}; logs in {self.directory}")
            time.sleep(0.05)

    def kill(self, port: int) -> None:
        """SIGKILL the node on `port`: it stops answering, as a crashed host does."""
        process = self.processes[next(i for i, (p, _) in enumerate(self.ports) if p == port)]
        process.kill()
        process.wait()

    def stop(self) -> None:
        for process in self.processes:
            stop_process(process)


def _served_by(port: int, pid: int) -> bool:
    """The redis-server of process `pid` answers on `port` (not another process that took the port first)."""
    try:
        with Redis(host="127.0.0.1", port=port, socket_timeout=5) as node:
            return node.info("server")["process_id"] == pid
    except RedisConnectionError:  # not listening (yet)
        return False
