"""API benchmark on loopback with a real redis-server: submit + status latency at increasing request rates
(open loop: requests are sent on a fixed schedule whatever the latency), then one job's event stream to N
concurrent SSE followers for each N given, and J jobs' streams each to one follower for each J given, side by
side: events/s delivered, delivery latency, the Redis connections it took (the most at once, the most waiting in a
blocking XREAD, and how many were opened) and what reading the events cost (XREADs, Redis's time in them, the API
process's CPU time). Prints p50/p99 latency and achieved throughput. With `--baseline DIR` the SSE cases
run first against an API from the code in DIR (e.g. `git archive main | tar -x -C DIR`), then this checkout's.

    python scripts/bench_api.py [--rates 50,100,200] [--seconds 5] [--followers 10,300] [--events 200]
                                [--jobs 150] [--job-events 20] [--job-rate 0] [--baseline DIR]
    python scripts/bench_api.py --rates '' --followers 10,300 --jobs ''     # only one job's SSE fan-out

Goal (issue 8): p99 submit < 20 ms at 200 req/s. Bounded: at most sum(rates) * seconds requests.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time

import httpx
from common import free_port, percentile  # beside this script

from heavy.embedded_redis import EmbeddedRedis
from heavy.store import Store

QUESTION = {"question": "Which Python statement leaves a loop early?", "trajectories": 2, "max_steps": 3}


async def timed(coroutine) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    response = await coroutine
    return (time.perf_counter() - started) * 1000, response


async def load_step(client: httpx.AsyncClient, rate: int, seconds: float) -> None:
    submits: list[float] = []
    statuses: list[float] = []
    errors = 0

    async def one() -> None:
        nonlocal errors
        try:
            await submit_and_read()
        except httpx.HTTPError:
            errors += 1

    async def submit_and_read() -> None:
        nonlocal errors
        ms, response = await timed(client.post("/v1/jobs", json=QUESTION))
        if response.status_code != 202:
            errors += 1
            return
        submits.append(ms)
        ms, response = await timed(client.get(f"/v1/jobs/{response.json()['id']}"))
        if response.status_code == 200:
            statuses.append(ms)
        else:
            errors += 1

    count = int(rate * seconds)
    started = time.perf_counter()
    tasks = []
    for i in range(count):  # open loop: request i leaves at i / rate whatever the latencies
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    print(f"{rate:>5} req/s offered | submit p50 {percentile(submits, .5):6.2f} ms"
          f"  p99 {percentile(submits, .99):6.2f} ms | status p50 {percentile(statuses, .5):6.2f} ms"
          f"  p99 {percentile(statuses, .99):6.2f} ms | {len(submits) / elapsed:6.1f} submits/s achieved,"
          f" {errors} errors", flush=True)


async def redis_usage(store: Store, peaks: dict[str, int], stop: asyncio.Event) -> None:
    """Sample the server's clients until `stop`: the most connected at once, and the most waiting in an XREAD."""
    while not stop.is_set():
        clients = await store.redis.client_list()
        peaks["connections"] = max(peaks["connections"], len(clients))
        blocked = sum(c["cmd"] == "xread" and "b" in c["flags"] for c in clients)
        peaks["blocked_reads"] = max(peaks["blocked_reads"], blocked)
        await asyncio.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    """The CPU time (user + system) process `pid` has used so far, from Linux's /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()  # from the 3rd field on: utime and stime are the 14th, 15th
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def redis_counters(store: Store) -> tuple[int, int, int]:
    """(connections accepted, XREADs run, microseconds spent in them) since the server started."""
    stats, commands = await store.redis.info("stats"), await store.redis.info("commandstats")
    xread = commands.get("cmdstat_xread", {"calls": 0, "usec": 0})
    return stats["total_connections_received"], xread["calls"], xread["usec"]


async def open_streams(client: httpx.AsyncClient) -> float:
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith("heavy_sse_followers "):
            return float(line.split()[1])
    return 0.0


async def sse_step(client: httpx.AsyncClient, store: Store, api_pid: int, jobs: int, per_job: int,
                   events: int, rate: float = 0) -> dict[str, float]:
    """`per_job` clients follow each of `jobs` jobs; once they all wait, `events` events are written to each job (in
    turns), at once or `rate` events/s in all. What they received, how fast, and what it took of Redis (the API
    process's connections, and the bench's own few) and of the API process while the events were written and read."""
    job_ids = []
    for _ in range(jobs):
        submitted = await client.post("/v1/jobs", json=QUESTION)
        assert submitted.status_code == 202, submitted.text
        job_ids.append(submitted.json()["id"])
    followers = jobs * per_job
    delays: list[float] = []
    counts: list[int] = []
    failures: list[str] = []

    async def follow(job_id: str) -> None:
        seen = 0
        try:
            async with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=60) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        event = json.loads(line[5:])
                        delays.append((time.time() - event["ts"]) * 1000)
                        seen += 1
                        if event["type"] == "report_ready":
                            break
        except httpx.HTTPError as exc:
            failures.append(type(exc).__name__)
        counts.append(seen)

    opened_before, _, _ = await redis_counters(store)
    peaks = {"connections": 0, "blocked_reads": 0}
    stop = asyncio.Event()
    sampler = asyncio.create_task(redis_usage(store, peaks, stop))
    tasks = [asyncio.create_task(follow(job_id)) for job_id in job_ids for _ in range(per_job)]
    for _ in range(300):  # until every follower is connected (or some failed)
        if await open_streams(client) >= followers - len(failures) or len(failures) == followers:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.5)  # a read's worth of waiting on the job, for the sampler
    _, xreads_before, xread_us_before = await redis_counters(store)
    cpu_before = cpu_seconds(api_pid)
    started = time.perf_counter()
    for n, (i, job_id) in enumerate(itertools.product(range(events), job_ids)):
        if rate and (delay := started + n / rate - time.perf_counter()) > 0:  # open loop, as load_step
            await asyncio.sleep(delay)
        last = i == events - 1
        await store.jobs.append_event(job_id, {"type": "report_ready" if last else "trajectory_step", "n": i,
                                               "ts": time.time()})
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)
    elapsed = time.perf_counter() - started
    api_cpu_s = cpu_seconds(api_pid) - cpu_before
    stop.set()
    await sampler
    opened, xreads, xread_us = await redis_counters(store)
    return {"case": f"{jobs}x{per_job}", "complete": sum(c == events for c in counts), "errors": len(failures),
            "events/s delivered": sum(counts) / elapsed, "delivery p50 ms": percentile(delays, .5),
            "delivery p99 ms": percentile(delays, .99), "peak Redis connections": peaks["connections"],
            "peak blocking XREADs": peaks["blocked_reads"], "Redis conns opened": opened - opened_before,
            "XREADs (events phase)": xreads - xreads_before, "Redis ms in XREADs": (xread_us - xread_us_before) / 1000,
            "XREAD us per event": (xread_us - xread_us_before) / (jobs * events), "API CPU ms": api_cpu_s * 1000}


def print_side_by_side(results: list[dict[str, float | str]], title: str) -> None:
    print(f"SSE ({title}): each case JxN is J jobs followed by N clients each of one API process, whose "
          "events are written at once", flush=True)
    for name in results[0]:
        cells = "".join(f"{value:>12}" if isinstance(value, str) else f"{value:>12.0f}"
                        for value in (result[name] for result in results))
        print(f"{name:>24}{cells}", flush=True)


async def run(args: argparse.Namespace, redis_url: str, base: str, title: str, api_pid: int) -> None:
    store = Store.connect(redis_url)
    await store.tenants.set_limits("bench", max_jobs=10**9, max_tokens=10**15)  # jobs reserve tokens
    key = (await store.tenants.create_key("bench", "bench_api")).secret
    most = max([*args.followers, *args.jobs, 0])
    limits = httpx.Limits(max_connections=most + 200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, limits=limits,
                                 timeout=30) as client:
        for _ in range(100):
            try:
                if (await client.get("/readyz")).status_code == 200:
                    break
            except httpx.TransportError:
                await asyncio.sleep(0.1)
        if args.rates and not title.startswith("baseline"):
            await load_step(client, 20, 1.0)  # warm-up, not reported separately
            for rate in args.rates:
                await load_step(client, rate, args.seconds)
        results = [await sse_step(client, store, api_pid, 1, followers, args.events) for followers in args.followers]
        results += [await sse_step(client, store, api_pid, jobs, 1, args.job_events, args.job_rate)
                    for jobs in args.jobs]
        if results:
            print_side_by_side(results, title)
    await store.aclose()


def numbers(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=numbers, default=[50, 100, 200], help="req/s to offer; '' for none")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--followers", type=numbers, default=[10, 300], help="follower counts, side by side")
    parser.add_argument("--events", type=int, default=200, help="per job, with --followers")
    parser.add_argument("--jobs", type=numbers, default=[150], help="job counts, each job with one follower")
    parser.add_argument("--job-events", type=int, default=20, help="per job, with --jobs")
    parser.add_argument("--job-rate", type=float, default=0,
                        help="events/s written to the --jobs jobs in all (0: as fast as one writer goes)")
    parser.add_argument("--baseline", help="a source tree to run the SSE cases against first, for comparison")
    args = parser.parse_args()
    sources = [(f"baseline {args.baseline}", args.baseline)] if args.baseline else []
    sources.append(("this checkout", os.getcwd()))
    with tempfile.TemporaryDirectory() as data, EmbeddedRedis(data) as redis:
        for title, source in sources:
            port = free_port()
            env = {**os.environ, "HEAVY_REDIS_URL": redis.url, "HEAVY_TENANT_MAX_JOBS": str(10**9),
                   "HEAVY_TENANT_MAX_STREAMS": str(10**9), "PYTHONPATH": os.path.abspath(source)}
            api = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "heavy.api:create_app", "--host",
                                    "127.0.0.1", "--port", str(port), "--log-level", "warning"], env=env,
                                   cwd=source)
            try:
                asyncio.run(run(args, redis.url, f"http://127.0.0.1:{port}", title, api.pid))
            finally:
                api.terminate()
                api.wait()


if __name__ == "__main__":
    main()
