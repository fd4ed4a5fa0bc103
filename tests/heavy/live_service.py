"""The service as a client meets it: the API (and dashboard) in a process of its own on a loopback port, so a test
can kill it (the OS then drops its connections) and start it again, with a worker in the test's process whose
scripted model takes a moment per step and can be held (all its calls or the aggregator's)."""

from __future__ import annotations

import asyncio
import subprocess

from heavy.worker import Worker
from tests.heavy.fakes import ScriptedBackend
from tests.heavy.worker_helpers import WORKER_SETTINGS, executor, researcher, spawn, stop, wait_api_ready

# a price per token, so a job's cost is not 0 and the dashboard has a cost to show
PRICED = WORKER_SETTINGS.model_copy(update={"price_per_mtok_prompt": 3.0, "price_per_mtok_completion": 15.0})


class Service:
    """API + dashboard in a process of its own on a loopback port (so a test can kill it: the OS then drops its
    connections), with a worker in this process whose scripted model takes a moment per step."""

    def __init__(self, store, redis_url: str, key_prefix: str, port: int) -> None:
        self.store, self.redis_url, self.key_prefix, self.port = store, redis_url, key_prefix, port
        self.url = f"http://127.0.0.1:{port}"
        self.stop_worker = asyncio.Event()
        self.model_gate = asyncio.Event()  # open unless a test holds the model's calls
        self.model_gate.set()
        self.aggregator_gate = asyncio.Event()  # or only the aggregator's, to see a job while it aggregates
        self.aggregator_gate.set()
        self.script = researcher  # what the model answers; a test may swap it before it submits a job
        backend = ScriptedBackend(lambda request: self.script(request), delay_s=lambda r: 0.4, gate=self.model_gate,
                                  aggregator_gate=self.aggregator_gate)
        self.worker = asyncio.create_task(Worker(store, backend, executor(), PRICED, name="w").run(self.stop_worker))
        self.api: subprocess.Popen | None = None

    async def start_api(self, env: dict[str, str] | None = None) -> None:
        self.api = spawn("api", self.redis_url, self.key_prefix, str(self.port), env=env)
        await wait_api_ready(self.url)

    async def start_api_again(self, env: dict[str, str]) -> None:
        """The API process replaced by one whose settings `env` changes (HEAVY_...)."""
        self.kill_api()
        await self.start_api(env)

    def kill_api(self) -> None:
        stop(self.api)  # SIGKILL: the OS drops its connections

    async def close(self) -> None:
        stop(self.api)
        self.stop_worker.set()
        await self.worker
