"""Job list filtered by status, on a real redis-server on loopback: one tenant with N jobs (a few running, the rest
ended), the dashboard's poll (`?status=active`, `?status=running`, `?status=done,failed`: first page of 20) read
from the tenant's status sets, beside the scan the store did before them (the status of every job of the tenant),
and the one-time backfill of a store older than the sets. Prints the median of --polls reads, in ms.

    python scripts/bench_job_list.py [--jobs 10000] [--polls 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time

from heavy.embedded_redis import EmbeddedRedis
from heavy.store import Store
from heavy.store.records import ACTIVE, DONE, FAILED, RUNNING

TENANT = "bench"
FILTERS = {"active": set(ACTIVE), "running": {RUNNING}, "done,failed": {DONE, FAILED}}
RUNNING_JOBS = 8


async def scan_page(store: Store, statuses: set[str], limit: int = 20) -> list[str]:
    """The filtered page as the store read it before the status sets: every job's status, 500 per round trip."""
    keys, matching, start = store.jobs.keys, [], 0
    while ids := await store.redis.zrevrange(keys.tenant_jobs(TENANT), start, start + 499):
        async with store.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(keys.job(job_id), "status")
            found = await pipe.execute()
        matching += [job_id for job_id, status in zip(ids, found, strict=True) if status in statuses]
        start += 500
    return matching[:limit]


async def median_ms(read, polls: int) -> float:
    times = []
    for _ in range(polls):
        started = time.perf_counter()
        await read()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def make_jobs(store: Store, count: int) -> None:
    for start in range(0, count, 200):
        made = [job for job, _ in await asyncio.gather(*(
            store.jobs.submit(TENANT, question=f"q{i}", mode="report", params={})
            for i in range(start, min(count, start + 200))))]
        running = made[:RUNNING_JOBS] if start == 0 else []
        await asyncio.gather(*(store.jobs.update(job.id, status=RUNNING) for job in running))
        await asyncio.gather(*(store.jobs.finish(job, DONE if n % 3 else FAILED)
                               for n, job in enumerate(made[len(running):])))


async def run(args: argparse.Namespace, url: str) -> None:
    store = Store.connect(url)
    await store.tenants.set_limits(TENANT, max_jobs=10**9)
    started = time.perf_counter()
    await make_jobs(store, args.jobs)
    print(f"{args.jobs} jobs ({RUNNING_JOBS} running) made in {time.perf_counter() - started:.1f} s")
    print(f"{'filter':<14}{'scan (before), ms':>20}{'status sets, ms':>18}")
    for name, statuses in FILTERS.items():
        new = await median_ms(lambda s=statuses: store.jobs.list(TENANT, statuses=s), args.polls)
        old = await median_ms(lambda s=statuses: scan_page(store, s), args.polls)
        print(f"{name:<14}{old:>20.1f}{new:>18.1f}")
    keys = store.jobs.keys
    await store.redis.delete(*keys.tenant_status_indexes(TENANT))  # a store older than the sets
    started = time.perf_counter()
    await store.jobs.list(TENANT, statuses={RUNNING})
    print(f"one-time backfill of a store older than the status sets: {(time.perf_counter() - started) * 1000:.0f} ms")
    await store.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--polls", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data, EmbeddedRedis(data) as redis:
        asyncio.run(run(args, redis.url))


if __name__ == "__main__":
    main()
