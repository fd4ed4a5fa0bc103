"""One big job, measured at two lengths: 8 trajectories of N steps each through a real worker, the API (its own
process) and a redis-server on loopback, with a scripted model and tools whose outputs are realistic in size (pages
of 5-20 KB, cut to the tool output limit as a real page is; short Python outputs). Printed side by side for each N,
with the ratio of the last N to the first: a ratio well past theirs (10 for 30 against 300) grows faster than the
steps do.

    python scripts/bench_big_job.py [--steps 30,300] [--trajectories 8]

What it measures: the worker's writes to Redis (checkpoints and events: count, bytes, the largest), the prompt
fitting's time per step, the worker's peak memory; Redis's memory for the job's keys and its AOF; the job record,
report and list answers; a replay of every event over SSE from the start (time to the last event, the API's memory);
the CLI board fed every event (drawn after the first and last 100); what the aggregator was given. Each length runs in
a process of its own (`--case N`), so peak memory is its own. The model's tool-call caps are raised for the run: at
the default (20 per tool and trajectory, shared by the job) a trajectory runs out of calls long before 300 steps.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from io import StringIO

import httpx
from common import free_port  # beside this script
from rich.console import Console

import heavy.agent.requests as agent_requests
from heavy.config import Settings
from heavy.display import LiveBoard
from heavy.embedded_redis import EmbeddedRedis
from heavy.events import event_from_dict
from heavy.llm.types import Completion, ToolCall, Usage
from heavy.store import Store
from heavy.tools.base import Source, ToolExecutor, ToolLimits, ToolResult
from heavy.worker import Worker

WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa", "lambda", "sigma", "omega", "river",
         "mountain", "city", "engine", "protocol", "measure", "history", "science", "report", "market", "signal")


def page_text(seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(5_000, 20_000) // 7))


class PageSearch:
    name = "search"
    description = "Search the corpus."
    parameters = {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}

    async def run(self, args, ctx) -> ToolResult:
        url = f"http://corpus/{args['query'].replace(' ', '-')}"
        text = page_text(hash(url) & 0xFFFF)
        source = Source(url=url, title=args["query"], fetched_at=time.time(), content_hash=str(hash(text)),
                        snippet=text[:200])
        return ToolResult(text=f"[1] {url}\n{text}", sources=(source,))


class PageOpen(PageSearch):
    name = "open_page"
    description = "Open a page."
    parameters = {"type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"]}

    async def run(self, args, ctx) -> ToolResult:
        return await super().run({"query": args["url"].rsplit("/", 1)[-1] + "-page"}, ctx)


class Python:
    name = "python"
    description = "Run Python."
    parameters = {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}

    async def run(self, args, ctx) -> ToolResult:
        n = int(args["code"].split("(")[1].split(")")[0])
        return ToolResult(text="\n".join(f"row {i}: {n * i ** 2}" for i in range(20)))


class BenchModel:
    """Step i of trajectory k: a search, an open, a Python run in turn, each new; the aggregator writes a line.
    Usage as a server counts it: the prompt's characters over 3."""

    name = "bench"

    def __init__(self) -> None:
        self.aggregator_prompts: list[int] = []  # characters of each aggregator prompt

    async def chat(self, messages, tools, sampling, *, max_tokens, stop=None, request_id=None, prefix_key=None,
                   meter=None):
        chars = sum(len(str(m.get("content") or "")) + len(str(m.get("tool_calls") or "")) for m in messages)
        usage = Usage(prompt_tokens=chars // 3, completion_tokens=30)
        parts = (request_id or "").split(":")
        if len(parts) != 3 or not parts[1].isdigit():
            self.aggregator_prompts.append(chars)
            return Completion(content="The measure is kappa [1].", usage=usage)
        if tools is None:  # a forced answer
            return Completion(content="kappa", usage=usage)
        k, step = parts[1], int(parts[2])
        name, arguments = [("search", {"query": f"t{k} topic {step}"}),
                           ("open_page", {"url": f"http://corpus/t{k}-doc-{step}"}),
                           ("python", {"code": f"print(table({k}{step}))"})][step % 3]
        call = ToolCall(id=f"c{step}", name=name, arguments=arguments)
        return Completion(content="", tool_calls=(call,), finish_reason="tool_calls", usage=usage)

    def stream(self, *args, **kwargs):
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


class Counted:
    """Wraps a store method: calls, bytes of JSON handed to it, the largest."""

    def __init__(self, method, payload) -> None:
        self.method, self.payload = method, payload
        self.calls = self.bytes = self.largest = self.largest_state = 0

    async def __call__(self, *args, **kwargs):
        data = self.payload(args, kwargs)
        size = len(json.dumps(data, ensure_ascii=False).encode())
        self.calls, self.bytes, self.largest = self.calls + 1, self.bytes + size, max(self.largest, size)
        if data.get("kind") == "state":  # a step's checkpoint, not a trajectory's result (written once)
            self.largest_state = max(self.largest_state, size)
        return await self.method(*args, **kwargs)


def peak_rss_mb(pid: int | None = None) -> float:
    if pid is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024


async def measure(steps: int, trajectories: int, redis_url: str, base: str, api_pid: int) -> dict[str, float]:
    store = Store.connect(redis_url)
    await store.queue.ensure_group()
    await store.tenants.set_limits("bench", max_jobs=10, max_tokens=10**12)
    key = (await store.tenants.create_key("bench", "bench_big_job")).secret
    checkpoints = Counted(store.jobs.save_checkpoint, lambda a, kw: a[2])
    events = Counted(store.jobs.append_event, lambda a, kw: a[1])
    store.jobs.save_checkpoint, store.jobs.append_event = checkpoints, events
    fitting = {"calls": 0, "s": 0.0, "last_s": 0.0}
    fit = agent_requests.fit_context

    def timed_fit(*args):
        started = time.perf_counter()
        fitted = fit(*args)
        fitting["calls"], fitting["last_s"] = fitting["calls"] + 1, time.perf_counter() - started
        fitting["s"] += fitting["last_s"]
        return fitted
    agent_requests.fit_context = timed_fit

    model = BenchModel()
    tools = ToolExecutor([PageSearch(), PageOpen(), Python()], ToolLimits(default_call_cap=steps))
    settings = Settings(worker_jobs=1, tenant_max_jobs=10)
    stop_worker = asyncio.Event()
    worker = asyncio.create_task(Worker(store, model, tools, settings, name="bench").run(stop_worker))
    out: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=600) as client:
        while True:
            with suppress(httpx.TransportError):
                if (await client.get("/readyz")).status_code == 200:
                    break
            await asyncio.sleep(0.1)
        started = time.perf_counter()
        job = (await client.post("/v1/jobs", json={
            "question": "Which measure do the sources agree on?", "trajectories": trajectories, "max_steps": steps,
            "trajectory_tokens": 10_000_000, "job_tokens": 100_000_000, "deadline_s": 7200, "mode": "report"})).json()
        while (record := (await client.get(f"/v1/jobs/{job['id']}")).json())["status"] not in (
                "done", "failed", "cancelled"):
            await asyncio.sleep(0.5)
        out["job wall s"] = time.perf_counter() - started
        out["status done"] = record["status"] == "done"
        stop_worker.set()
        await worker
        out["worker peak RSS MB"] = peak_rss_mb()
        out["checkpoint writes"] = checkpoints.calls
        out["checkpoint MB written"] = checkpoints.bytes / 1e6
        out["largest checkpoint KB"] = checkpoints.largest / 1e3
        out["largest step checkpoint KB"] = checkpoints.largest_state / 1e3
        out["events"] = events.calls
        out["event MB written"] = events.bytes / 1e6
        out["largest event KB"] = events.largest / 1e3
        out["fit_context calls"] = fitting["calls"]
        out["fit_context total s"] = fitting["s"]
        out["fit_context last ms"] = fitting["last_s"] * 1000
        out["aggregator calls"] = len(model.aggregator_prompts)
        out["aggregator prompt KB max"] = max(model.aggregator_prompts, default=0) / 1e3

        info = await store.redis.info()
        jobs = store.jobs
        # the hash, then events, report, the checkpoints and their logs, the event appends' ids
        parts = [jobs.keys.job(job["id"]), *jobs.keys.job_parts(job["id"], trajectories)]
        usage = [await store.redis.memory_usage(part) or 0 for part in parts]
        out["redis job keys MB"] = sum(usage) / 1e6
        out["redis checkpoints MB"] = sum(usage[3:3 + 2 * trajectories]) / 1e6
        out["redis events MB"] = usage[1] / 1e6
        out["redis event appends MB"] = usage[-1] / 1e6
        out["redis used MB"] = info["used_memory"] / 1e6
        out["AOF MB"] = info.get("aof_current_size", 0) / 1e6
        out["AOF rewrites"] = info.get("aof_rewrites", 0)
        out["MB sent to Redis"] = info["total_net_input_bytes"] / 1e6

        for name, path in (("job record KB", f"/v1/jobs/{job['id']}"), ("report KB", f"/v1/jobs/{job['id']}/report"),
                           ("job list KB", "/v1/jobs")):
            response = await client.get(path)
            out[name] = len(response.content) / 1e3

        api_before = peak_rss_mb(api_pid)
        started, replayed, received = time.perf_counter(), [], 0
        async with client.stream("GET", f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": "0"}) as stream:
            async for line in stream.aiter_lines():
                received += len(line) + 1
                if line.startswith("data:"):
                    replayed.append(json.loads(line[5:]))
        out["SSE replay s"] = time.perf_counter() - started
        out["SSE replay events"] = len(replayed)
        out["SSE replay MB"] = received / 1e6
        out["API peak RSS MB (before replay)"] = api_before
        out["API peak RSS MB (after replay)"] = peak_rss_mb(api_pid)

        board, console = LiveBoard(trajectories), Console(file=StringIO(), width=120)
        drawn = {"first": [], "last": []}  # ms to draw the board after each of the first and last 100 events
        for n, data in enumerate(replayed):
            with suppress(ValueError):  # an event this code does not know
                board.apply(event_from_dict(data))
            part = "first" if n < 100 else "last" if n >= len(replayed) - 100 else None
            if part:
                started = time.perf_counter()
                console.print(board.render())
                drawn[part].append((time.perf_counter() - started) * 1000)
        for part, times in drawn.items():
            out[f"CLI board ms a draw ({part} 100)"] = sum(times) / max(1, len(times))
    await store.aclose()
    return out


def run_case(steps: int, trajectories: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as data, EmbeddedRedis(data) as redis:
        port = free_port()
        env = {**os.environ, "HEAVY_REDIS_URL": redis.url, "HEAVY_TENANT_MAX_JOBS": "10"}
        api = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "heavy.api:create_app", "--host",
                                "127.0.0.1", "--port", str(port), "--log-level", "warning"], env=env)
        try:
            return asyncio.run(measure(steps, trajectories, redis.url, f"http://127.0.0.1:{port}", api.pid))
        finally:
            api.terminate()
            api.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="30,300", help="steps per trajectory, side by side")
    parser.add_argument("--trajectories", type=int, default=8)
    parser.add_argument("--case", type=int, help=argparse.SUPPRESS)  # one length, in this process: its JSON
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.trajectories)))
        return
    lengths = [int(n) for n in args.steps.split(",")]
    results = []
    for steps in lengths:
        case = subprocess.run([sys.executable, __file__, "--case", str(steps), "--trajectories",
                               str(args.trajectories)], stdout=subprocess.PIPE, text=True, check=True)
        results.append(json.loads(case.stdout.strip().splitlines()[-1]))
    print(f"{'':>34}" + "".join(f"{f'{n} steps':>14}" for n in lengths) + f"{'ratio':>10}")
    for name in results[0]:
        values = [float(r[name]) for r in results]
        ratio = values[-1] / values[0] if values[0] else float("nan")
        print(f"{name:>34}" + "".join(f"{v:>14.2f}" for v in values) + f"{ratio:>10.1f}")


if __name__ == "__main__":
    main()
