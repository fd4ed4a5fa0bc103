"""The service's Prometheus metrics as an SRE scrapes them: a `heavy worker` (no API in its process) shows its jobs'
metrics on a port of its own, every ended job is counted once, whichever process ended it, and timed once, from
when it first started."""

import asyncio
import contextlib
import time

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from heavy.llm.types import LLMError
from heavy.worker import Worker
from heavy.worker.runner import MAX_ATTEMPTS
from tests.heavy.api_helpers import app_for, client_for
from tests.heavy.fakes import ScriptedBackend
from tests.heavy.worker_helpers import JOB, WORKER_SETTINGS, executor, researcher, wait_for

pytestmark = pytest.mark.anyio


def sample(exposition: str, name: str, **labels: str) -> float:
    """The value of one sample of a /metrics text (0 when it has none yet)."""
    for family in text_string_to_metric_families(exposition):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return found.value
    return 0.0


@pytest.fixture
async def acme(store):
    key = await store.tenants.create_key("acme")
    async with client_for(app_for(store, WORKER_SETTINGS), key.secret) as client:
        yield client


async def has_status(client, job_id: str, status: str) -> bool:
    return (await client.get(f"/v1/jobs/{job_id}")).json()["status"] == status


@contextlib.asynccontextmanager
async def worker_metrics(store, port: int):
    """A worker serving its /metrics on `port`, and a function that scrapes it."""
    settings = WORKER_SETTINGS.model_copy(update={"worker_metrics_port": port})
    stop = asyncio.Event()
    worker = asyncio.create_task(Worker(store, ScriptedBackend(researcher), executor(), settings).run(stop))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as scraper:
            async def scrape() -> str:
                return (await scraper.get("/metrics")).text

            yield scrape
    finally:
        stop.set()
        await worker


async def test_a_worker_shows_its_jobs_steps_and_tokens_on_its_own_metrics_port(acme, store, free_tcp_port):
    """In deploy/k8s the workers are pods of their own: what they count (jobs ended, steps, tokens, tool calls) must
    be scraped from them, as the API's /metrics is another process's."""
    async with worker_metrics(store, free_tcp_port) as scrape:
        before = await wait_for(lambda: scraped(scrape))
        job = (await acme.post("/v1/jobs", json=JOB)).json()
        await wait_for(lambda: has_status(acme, job["id"], "done"))
        after = await scrape()

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert moved("heavy_jobs_finished_total", status="done") == 1
    assert moved("heavy_steps_total") == 9  # 3 trajectories: search, search, answer
    assert moved("heavy_tool_calls_total", tool="search", ok="true") == 6
    assert moved("heavy_tokens_total", kind="completion") > 0
    assert moved("heavy_trajectories_total", stop_reason="answered") == 3
    assert moved("heavy_job_seconds_count") == 1


async def test_a_worker_shows_none_of_the_apis_metrics(store, free_tcp_port):
    """The queue gauges, streams and request metrics are the API's: a worker showing them at 0 would pull an avg or
    min over all heavy pods down. Its own jobs' metrics and its process's stay."""
    async with worker_metrics(store, free_tcp_port) as scrape:
        shown = await wait_for(lambda: scraped(scrape))
    families = {family.name for family in text_string_to_metric_families(shown)}
    assert not families & {"heavy_queue_depth", "heavy_queue_pending", "heavy_sse_followers", "heavy_sse_readers",
                           "heavy_api_requests", "heavy_api_request_seconds", "heavy_jobs_submitted"}
    assert {"heavy_jobs_finished", "heavy_steps", "heavy_errors", "process_cpu_seconds"} <= families


async def scraped(scrape) -> str | None:
    try:
        return await scrape()
    except httpx.TransportError:
        return None


async def test_jobs_ended_without_a_worker_count_as_finished_once(acme, store):
    """A queued or held job cancelled through the API, and a held one whose approval ran out, end with no worker:
    they count in heavy_jobs_finished_total as a worker's jobs do (submitted minus finished is what is active), and
    a repeated cancel counts nothing more."""
    async def cancelled() -> float:
        return sample((await acme.get("/metrics")).text, "heavy_jobs_finished_total", status="cancelled")

    start = await cancelled()
    queued = (await acme.post("/v1/jobs", json=JOB)).json()
    held = (await acme.post("/v1/jobs", json={**JOB, "review": True})).json()
    for job in (queued, held, queued):
        assert (await acme.post(f"/v1/jobs/{job['id']}/cancel")).json()["status"] == "cancelled"
    assert await cancelled() - start == 2
    store.jobs.approval_window_s = 0.05
    expiring = (await acme.post("/v1/jobs", json={**JOB, "review": True})).json()
    await wait_for(lambda: store.jobs.expire_unapproved())  # what a worker's sweep does
    assert await has_status(acme, expiring["id"], "cancelled") and await cancelled() - start == 3


async def test_every_job_a_worker_ends_failed_counts_once_as_a_job_error(acme, store):
    """heavy_errors_total{where="job"} counts failed jobs: one whose run failed (all its trajectories did) and one
    given up after its workers died, which fails without running."""
    def job_errors() -> float:
        return REGISTRY.get_sample_value("heavy_errors_total", {"where": "job"}) or 0.0

    def unreachable(request):
        raise LLMError("HTTP 503: the model endpoint is restarting")

    start = job_errors()
    run_failed = (await acme.post("/v1/jobs", json=JOB)).json()
    given_up = (await acme.post("/v1/jobs", json=JOB)).json()
    await store.jobs.update(given_up["id"], attempts=MAX_ATTEMPTS)  # as if every worker that took it had died
    stop = asyncio.Event()
    worker = asyncio.create_task(Worker(store, ScriptedBackend(unreachable), executor(), WORKER_SETTINGS).run(stop))
    try:
        for job in (run_failed, given_up):
            await wait_for(lambda job=job: has_status(acme, job["id"], "failed"))
    finally:
        stop.set()
        await worker
    assert job_errors() - start == 2


async def test_a_job_resumed_after_its_worker_stopped_is_timed_once_from_when_it_first_started(acme, store):
    """heavy_job_seconds is a job's wall time: a job whose first worker was stopped mid-run (a rolling update) and
    which a second worker finished is one observation, counted from its first start, not one per run."""
    def job_seconds() -> tuple[float, float]:
        return (REGISTRY.get_sample_value("heavy_job_seconds_count") or 0.0,
                REGISTRY.get_sample_value("heavy_job_seconds_sum") or 0.0)

    count, total = job_seconds()
    held = ScriptedBackend(researcher, gate=asyncio.Event())  # the first worker's requests never answer
    stop = asyncio.Event()
    first = asyncio.create_task(Worker(store, held, executor(), WORKER_SETTINGS, name="w1").run(stop))
    job = (await acme.post("/v1/jobs", json=JOB)).json()
    await wait_for(lambda: asyncio.sleep(0, result=bool(held.requests)))
    stop.set()
    await first
    await store.jobs.update(job["id"], started=time.time() - 100)  # as if it had started 100 s ago
    stop = asyncio.Event()
    second = asyncio.create_task(Worker(store, ScriptedBackend(researcher), executor(), WORKER_SETTINGS,
                                        name="w2").run(stop))
    try:
        await wait_for(lambda: has_status(acme, job["id"], "done"))
    finally:
        stop.set()
        await second
    now_count, now_total = job_seconds()
    assert now_count - count == 1 and now_total - total >= 100
