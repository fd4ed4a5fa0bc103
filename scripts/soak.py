"""Soak: many jobs through a real API and worker (scripts/soak_roles.py, each a process of its own) and a real
redis-server on loopback, as users drive them: submit and follow the events to the end, follow and disconnect
mid-stream, cancel (queued or running), finish now, delete, callbacks to a slow, a failing and a closed receiver,
bad requests; ended jobs not deleted expire (HEAVY_JOB_RETENTION_S); the worker is restarted now and then (SIGTERM, a
new one), as a rolling update does. The model is a scripted OpenAI-compatible server that answers at once, so the
run measures the service.

While it runs it samples each process (RSS, open fds, threads; inside the API and worker: asyncio tasks, Python
objects and the structures kept per job or stream) and Redis (keys, keys without a TTL, memory, consumers of the jobs
group, pending entries, due callbacks, the tenant's job list, clients), and prints each figure's growth per 1,000
jobs over the first and the second half of the run side by side: a leak shows as the same slope in both, warm-up as
a first-half slope only, noise as none.
Then, once idle, what is left (per-stream and per-job structures should be back at 0). Nobody lists the jobs: a
page of the list is not what clears the tenant's list of expired jobs.

    PYTHONPATH=. .venv/bin/python scripts/soak.py [--jobs 600] [--clients 6]      # ~5 minutes on 2 cores

SOAK_TRACEMALLOC=api:FILE (or worker:FILE): what that process's Python heap grew by, by line, in FILE (soak_roles.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import redis.asyncio as aioredis
from common import free_port, print_slopes, wait_until_up  # beside this script

from heavy.embedded_redis import EmbeddedRedis
from heavy.store import Store
from heavy.store.records import TERMINAL

ROLES = Path(__file__).resolve().parent / "soak_roles.py"
SCENARIOS = ("follow", "disconnect", "cancel_queued", "cancel_running", "finish_now", "callback_slow",
             "callback_failing", "callback_down", "bad_requests")
JOB = {"question": "Which module parses command-line options?", "trajectories": 2, "max_steps": 4,
       "tools": ["search", "open_page"]}
PAGES = {"argparse.md": "# argparse\n\nargparse parses command-line options and arguments.\n",
         "getopt.md": "# getopt\n\ngetopt is a C-style parser for command-line options.\n"}
SLOW_CALLBACK_S = 1.5  # under the attempt's timeout: delivered late


async def callback_receiver(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A webhook receiver: /slow answers after SLOW_CALLBACK_S, /failing with a 503, anything else at once."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length")), b"0"))
        await reader.readexactly(length)
        path = head.split(b" ")[1]
        if path == b"/slow":
            await asyncio.sleep(SLOW_CALLBACK_S)
        status = b"503 Service Unavailable" if path == b"/failing" else b"200 OK"
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


class Driver:
    def __init__(self, client: httpx.AsyncClient, receiver: int, closed: int) -> None:
        self.client, self.receiver, self.closed = client, receiver, closed
        self.outcomes: dict[str, int] = {}

    async def run(self, scenario: str) -> None:
        outcome = "ok"
        try:
            await getattr(self, scenario)()
        except Exception as exc:  # counted and shown at the end: the soak goes on
            outcome = f"{type(exc).__name__}: {str(exc)[:80]}"
        key = f"{scenario}: {outcome}"
        self.outcomes[key] = self.outcomes.get(key, 0) + 1

    async def submit(self, **extra) -> str:
        response = await self.client.post("/v1/jobs", json={**JOB, "mode": ("report", "answer")[len(extra) % 2],
                                                            **extra})
        assert response.status_code == 202, response.text
        return response.json()["id"]

    async def events(self, job_id: str, until: int | None = None):
        """The job's events as (type) strings, to its end or the `until`-th (then the client disconnects)."""
        async with self.client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
            assert response.status_code == 200, await response.aread()
            seen = 0
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    seen += 1
                    yield line.removeprefix("event:").strip()
                    if until is not None and seen >= until:
                        return

    async def ended(self, job_id: str) -> None:
        for _ in range(600):
            response = await self.client.get(f"/v1/jobs/{job_id}")
            if response.status_code == 404:  # expired (its callback outlived the retention)
                return
            job = response.json()
            if job["status"] in TERMINAL and job.get("callback_status") not in ("pending", "sending"):
                return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"job {job_id} did not end")

    async def delete(self, job_id: str) -> None:
        response = await self.client.delete(f"/v1/jobs/{job_id}")
        assert response.status_code == 204, response.text

    async def follow(self) -> None:
        job_id = await self.submit()
        async for _ in self.events(job_id):
            pass
        await self.delete(job_id)

    async def disconnect(self) -> None:  # left to expire
        job_id = await self.submit()
        async for _ in self.events(job_id, until=3):
            pass
        await self.ended(job_id)

    async def cancel_queued(self) -> None:
        job_id = await self.submit()
        await self.client.post(f"/v1/jobs/{job_id}/cancel")
        await self.ended(job_id)
        await self.delete(job_id)

    async def cancel_running(self) -> None:
        job_id = await self.submit()
        async for kind in self.events(job_id):
            if kind == "trajectory_step":
                await self.client.post(f"/v1/jobs/{job_id}/cancel")  # 409 when it ended meanwhile
        await self.ended(job_id)
        await self.delete(job_id)

    async def finish_now(self) -> None:
        job_id = await self.submit()
        async for kind in self.events(job_id, until=4):
            if kind == "trajectory_step":
                await self.client.post(f"/v1/jobs/{job_id}/finish")
        await self.ended(job_id)
        await self.delete(job_id)

    async def callback(self, url: str) -> None:
        job_id = await self.submit(callback_url=url, callback_secret="s" * 16)
        await self.ended(job_id)

    async def callback_slow(self) -> None:
        await self.callback(f"http://127.0.0.1:{self.receiver}/slow")

    async def callback_failing(self) -> None:
        await self.callback(f"http://127.0.0.1:{self.receiver}/failing")

    async def callback_down(self) -> None:
        await self.callback(f"http://127.0.0.1:{self.closed}/hook")

    async def bad_requests(self) -> None:
        assert (await self.client.post("/v1/jobs", content=b"{not json",
                                       headers={"Content-Type": "application/json"})).status_code == 422
        assert (await self.client.post("/v1/jobs", json={**JOB, "trajectories": 99})).status_code == 422
        assert (await self.client.get(f"/v1/jobs/{'0' * 32}")).status_code == 404
        assert (await self.client.get(f"/v1/jobs/{'0' * 32}/events")).status_code == 404
        assert (await self.client.get("/v1/jobs", headers={"Authorization": "Bearer nope"})).status_code == 401
        await self.follow()


def process_figures(name: str, process: psutil.Process, stats_file: Path | None) -> dict[str, float]:
    figures = {f"{name} rss MB": process.memory_info().rss / 2**20, f"{name} fds": process.num_fds(),
               f"{name} threads": process.num_threads()}
    if stats_file is not None and stats_file.exists():
        lines = stats_file.read_text().splitlines()
        if lines:
            inside = json.loads(lines[-1])
            figures.update({f"{name} {key}": value for key, value in inside.items() if key not in ("t", "threads")})
    return figures


async def redis_figures(redis: aioredis.Redis) -> dict[str, float]:
    keys = no_ttl = 0
    async for key in redis.scan_iter(count=1000):
        keys += 1
        no_ttl += await redis.ttl(key) == -1
    group = await redis.xinfo_consumers("heavy:jobs", "workers")
    memory, clients = await redis.info("memory"), await redis.info("clients")
    return {"redis keys": keys, "redis keys without TTL": no_ttl, "redis used MB": memory["used_memory"] / 2**20,
            "redis consumers": len(group), "redis pending": (await redis.xpending("heavy:jobs", "workers"))["pending"],
            "redis jobs stream": await redis.xlen("heavy:jobs"), "redis due callbacks": await redis.zcard(
                "heavy:callbacks"), "redis tenant's listed jobs": await redis.zcard("heavy:tenant:soak:jobs"),
            "redis clients": clients["connected_clients"]}


async def soak(args: argparse.Namespace, redis_url: str, home: Path) -> None:
    corpus = home / "corpus"
    corpus.mkdir()
    for name, text in PAGES.items():
        (corpus / name).write_text(text)
    index = home / "index.sqlite"
    subprocess.run([sys.executable, "-m", "heavy.cli", "corpus", "add", str(corpus), "--index", str(index)],
                   check=True, capture_output=True)
    receiver = await asyncio.start_server(callback_receiver, "127.0.0.1", 0)
    receiver_port, closed_port, api_port, model_port = receiver.sockets[0].getsockname()[1], free_port(), \
        free_port(), free_port()
    env = {**os.environ, "HEAVY_BACKEND": "openai", "HEAVY_OPENAI_BASE_URL": f"http://127.0.0.1:{model_port}/v1",
           "HEAVY_MODEL": "soak", "HEAVY_JOB_RETENTION_S": "20", "HEAVY_CHECK_CLAIMS": "false",
           "HEAVY_WORKER_JOBS": "4", "HEAVY_WEBHOOK_TIMEOUT_S": "2", "HEAVY_WEBHOOK_ATTEMPTS": "2",
           "HEAVY_WEBHOOK_ALLOW": json.dumps([f"127.0.0.1:{receiver_port}", f"127.0.0.1:{closed_port}"]),
           "HEAVY_LLM_MAX_RETRIES": "1", "HEAVY_WORKER_LEASE_S": "3", "HEAVY_HOME": str(home),
           "HEAVY_CONTEXT_TOKENS": "4096"}
    stats = {"api": home / "api.stats", "worker": home / "worker.stats"}

    def start_worker() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(ROLES), "worker", redis_url, str(index), str(stats["worker"])],
                                env=env)

    processes = {
        "model": subprocess.Popen([sys.executable, str(ROLES), "model", str(model_port)], env=env),
        "api": subprocess.Popen([sys.executable, str(ROLES), "api", redis_url, str(api_port), str(stats["api"])],
                                env=env),
        "worker": start_worker()}
    store, redis = Store.connect(redis_url), aioredis.from_url(redis_url, decode_responses=True)
    try:
        key = await store.tenants.create_key("soak")
        await store.tenants.set_limits("soak", max_jobs=1000, max_streams=1000)
        headers = {"Authorization": f"Bearer {key.secret}"}
        limits = httpx.Limits(max_connections=args.clients * 2)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", headers=headers, timeout=60,
                                     limits=limits) as client:
            await wait_until_up(client, "/readyz", tries=100, pause_s=0.3)
            driver, done, samples = Driver(client, receiver_port, closed_port), 0, []
            watched = {name: psutil.Process(processes[name].pid) for name in ("api", "worker")}

            async def sample() -> dict[str, float]:
                figures = {}
                for name, process in watched.items():
                    figures.update(process_figures(name, process, stats.get(name)))
                return {**figures, **await redis_figures(redis)}

            async def client_loop(first: int) -> None:
                nonlocal done
                n = first
                while n < args.jobs:
                    await driver.run(SCENARIOS[n % len(SCENARIOS)])
                    done += 1
                    if done % args.sample_every == 0:
                        samples.append((done, await sample()))
                        print(f"{time.strftime('%H:%M:%S')} {done} jobs", flush=True)
                    if args.restart_every and done % args.restart_every == 0:
                        await restart_worker()
                    n += args.clients

            async def restart_worker() -> None:
                """As a rolling update does: SIGTERM (its running jobs are resumed after their lease), a new worker."""
                processes["worker"].terminate()
                await asyncio.to_thread(processes["worker"].wait)
                processes["worker"] = start_worker()
                watched["worker"] = psutil.Process(processes["worker"].pid)

            started = time.monotonic()
            await asyncio.gather(*(client_loop(i) for i in range(args.clients)))
            print(f"\n{done} jobs in {time.monotonic() - started:.0f} s; outcomes:")
            for outcome, count in sorted(driver.outcomes.items()):
                print(f"  {count:5d}  {outcome}")
            print_slopes(samples)
            await asyncio.sleep(args.settle_s)  # the retention runs out, the streams' leases lapse
            print(f"\n{args.settle_s:g} s idle later:")
            for name, value in (await sample()).items():
                print(f"  {name:32s} {value:10.1f}")
    finally:
        for process in processes.values():
            process.terminate()
            process.wait()
        receiver.close()
        await redis.aclose()
        await store.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=600)
    parser.add_argument("--clients", type=int, default=6, help="users at once, each running one scenario at a time")
    parser.add_argument("--sample-every", type=int, default=25, help="jobs between samples")
    parser.add_argument("--restart-every", type=int, default=50, help="jobs between worker restarts (0: none)")
    parser.add_argument("--settle-s", type=float, default=25.0, help="idle time before the last sample")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as embedded:
        asyncio.run(soak(args, embedded.url, Path(tmp)))


if __name__ == "__main__":
    main()
