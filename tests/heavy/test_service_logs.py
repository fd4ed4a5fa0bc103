"""The services' logs are JSON lines: every line `heavy serve` writes parses (uvicorn's included), and a message
holding a quote, which a tenant's callback URL can put there, or a traceback stays one record; and a callback URL's
path and query, which may hold its receiver's token, stay out of them."""

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from heavy.aggregate import REPORT_REQUEST
from heavy.api import create_app, open_streams
from heavy.api.models import JobCreate
from heavy.api.open_streams import OpenStreams
from heavy.config import Settings
from heavy.llm.openai_backend import OpenAIBackend
from heavy.llm.types import LLMError
from heavy.logs import JsonLines, log_about
from heavy.store import Store
from heavy.store.records import DONE
from heavy.tools.ssrf import SsrfGuard
from heavy.webhooks import deliver
from heavy.worker import Worker
from tests.heavy.fakes import ScriptedBackend
from tests.heavy.loopback_server import LoopbackServer
from tests.heavy.worker_helpers import JOB, WORKER_SETTINGS, executor, researcher, wait_for

REPO = Path(__file__).resolve().parents[2]
SERVE_S = 60


@contextlib.contextmanager
def heavy_serve(port: int, home: Path, **env: str) -> Iterator[Path]:
    """`heavy serve` on `port` in a process of its own until the block ends; the file its log goes to."""
    env = {**os.environ, "HEAVY_HOME": str(home), **env}
    log = home / "serve.log"
    with log.open("w") as stderr:
        # from the repository: this checkout's heavy, not the one the `heavy` script was installed from
        serve = subprocess.Popen([sys.executable, "-c", "from heavy.cli import app; app()", "serve", "--port",
                                  str(port)], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + SERVE_S
        while True:
            assert serve.poll() is None and time.monotonic() < deadline, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield log
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(SERVE_S)


def test_every_line_heavy_serve_logs_is_one_json_object(redis_url, free_tcp_port, tmp_path):
    """uvicorn's access lines too; a request made with a key names its tenant by field."""
    key = asyncio.run(_create_key(redis_url, "acme"))
    with heavy_serve(free_tcp_port, tmp_path, HEAVY_REDIS_URL=redis_url) as log:
        httpx.get(f"http://127.0.0.1:{free_tcp_port}/v1/jobs/%22%0a")  # a 401, in the access log
        httpx.get(f"http://127.0.0.1:{free_tcp_port}/v1/jobs", headers={"Authorization": f"Bearer {key}"})
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert any("GET /healthz" in r["msg"] for r in records) and any("401" in r["msg"] for r in records), records
    [listed] = [r for r in records if "GET /v1/jobs HTTP" in r["msg"]]
    assert listed["tenant"] == "acme" and all("tenant" not in r for r in records if "/healthz" in r["msg"])


def test_a_callback_urls_path_and_query_stay_out_of_the_logs(redis_url, free_tcp_port, tmp_path):
    """A callback URL's path or query may hold its receiver's token (a chat hook's URL is its secret): the log of
    a delivered callback and of a refused one names the receiver's origin only. The callbacks here are sent by the
    API, as a queued job cancelled there ends without a worker."""
    key = asyncio.run(_create_key(redis_url, "acme"))
    with LoopbackServer({}) as receiver, heavy_serve(free_tcp_port, tmp_path, HEAVY_REDIS_URL=redis_url,
                                                     HEAVY_WEBHOOK_ALLOW=f'["127.0.0.1:{receiver.port}"]',
                                                     HEAVY_WEBHOOK_ATTEMPTS="1") as log:
        api = httpx.Client(base_url=f"http://127.0.0.1:{free_tcp_port}", headers={"Authorization": f"Bearer {key}"})
        for hook in (f"{receiver.base_url}/hooks/T0/SECRET-PATH?token=SECRET-QUERY", "http://10.0.0.8/SECRET-PATH"):
            job = api.post("/v1/jobs", json={"question": "q", "callback_url": hook}).json()
            api.post(f"/v1/jobs/{job['id']}/cancel")
            deadline = time.monotonic() + SERVE_S
            # "pending" at the cancel and "sending" while out: the delivery's log line comes after
            while api.get(f"/v1/jobs/{job['id']}").json()["callback_status"] in (None, "pending", "sending"):
                assert time.monotonic() < deadline
                time.sleep(0.05)
    text = log.read_text()
    assert "SECRET" not in text
    callbacks = [json.loads(line)["msg"] for line in text.splitlines() if ": callback " in line]
    assert len(callbacks) == 2 and "refused to fetch http://10.0.0.8/...: it resolves to 10.0.0.8" in callbacks[1]


async def _create_key(redis_url: str, tenant: str) -> str:
    store = Store.connect(redis_url, Settings())
    try:
        return (await store.tenants.create_key(tenant)).secret
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_a_callback_host_with_a_quote_stays_inside_its_log_record(store, json_lines):
    host = 'hook"}{"forged'  # httpx takes quotes and braces in a host name

    async def unresolvable(name: str, port: int) -> list[str]:
        raise OSError(f"no such host {name}")  # the lookup fails before any packet leaves

    body = JobCreate(question="q", callback_url=f"http://{host}/x")  # what the API takes from a tenant
    job, _ = await store.jobs.submit("acme", question=body.question, mode="report", params={"trajectories": 1},
                                     callback_url=body.callback_url)
    await store.jobs.finish(job, DONE)
    await deliver(store.jobs, job.id, WORKER_SETTINGS, SsrfGuard(resolver=unresolvable))
    (line,) = json_lines
    record = json.loads(line)
    assert record["level"] == "INFO" and host in record["msg"] and "\n" not in line


def test_a_traceback_is_a_field_of_its_record():
    record = logging.LogRecord("heavy.worker.runner", logging.ERROR, __file__, 1, "job %s: worker error", ("j",), None)
    try:
        raise RuntimeError('a "quoted"\nsecond line')
    except RuntimeError:
        record.exc_info = sys.exc_info()
    line = JsonLines().format(record)
    assert "\n" not in line
    assert json.loads(line)["exc"].endswith('RuntimeError: a "quoted"\nsecond line')


@pytest.mark.anyio
async def test_a_jobs_log_lines_name_the_job_and_its_tenant_by_field(store, json_lines):
    """Every line a worker logs while it runs a job carries job_id and tenant, those whose module does not know
    the job too (the report pass's failure, here): a log pipeline selects a job's or a tenant's lines by field."""
    def report_pass_fails(request):
        if request.request_id == REPORT_REQUEST:
            raise LLMError("HTTP 503: the model endpoint is restarting")
        return researcher(request)

    job, _ = await store.jobs.submit("acme", question=JOB["question"], mode="report",
                                     params=JobCreate(**JOB).resolve(WORKER_SETTINGS))
    stop = asyncio.Event()
    worker = Worker(store, ScriptedBackend(report_pass_fails), executor(), WORKER_SETTINGS)
    running = asyncio.create_task(worker.run(stop))
    try:
        await wait_for(lambda: _ended(store, job.id))
    finally:
        stop.set()
        await running
    records = [json.loads(line) for line in json_lines]
    about_job = [r for r in records if "report pass failed" in r["msg"] or f"job {job.id}: partial" in r["msg"]]
    assert len(about_job) == 2 and all((r["job_id"], r["tenant"]) == (job.id, "acme") for r in about_job), records
    assert all("job_id" not in r for r in records if r["msg"].startswith("worker "))  # started, stopped


async def _ended(store, job_id: str) -> bool:
    return (await store.jobs.get(job_id)).terminal


@pytest.mark.anyio
async def test_the_stream_lease_renewal_every_tenant_shares_is_logged_as_none_of_theirs(store, json_lines,
                                                                                         monkeypatch):
    """An API process renews all its streams' leases in one task, started by whichever request opened the first
    stream: its failures are not that request's tenant's lines."""
    async def unreachable(by_tenant):
        raise ConnectionError("redis is away")

    monkeypatch.setattr(open_streams, "RENEW_S", 0.01)
    monkeypatch.setattr(store.streams, "renew", unreachable)
    streams = OpenStreams(store.streams, cap=4)

    async def open_as_a_request_does(tenant: str) -> str:
        log_about(tenant=tenant)  # what the API's key lookup does
        return await streams.open(tenant)

    stream = await asyncio.create_task(open_as_a_request_does("acme"))
    await wait_for(lambda: asyncio.sleep(0, result=any("renewing" in line for line in json_lines)))
    streams.close(stream)
    renewal = json.loads(next(line for line in json_lines if "renewing" in line))
    assert renewal["level"] == "WARNING" and "tenant" not in renewal


@pytest.mark.anyio
async def test_the_servers_context_read_every_job_shares_is_logged_as_none_of_theirs(json_lines):
    """A worker's backend reads the model server's context once, for every job: started by one tenant's job, its
    lines are not that job's nor that tenant's."""
    async def not_up_yet(reader, writer):  # the connection is dropped unanswered, as by a server still loading
        writer.close()

    listening = await asyncio.start_server(not_up_yet, "127.0.0.1", 0)
    llm = OpenAIBackend(f"http://127.0.0.1:{listening.sockets[0].getsockname()[1]}/v1", "m")

    async def ask_as_a_job_does() -> int | None:
        log_about(job_id="job-1", tenant="acme")  # what the worker does in a job's task
        return await llm.served_context()

    try:
        assert await asyncio.create_task(ask_as_a_job_does()) is None
    finally:
        await llm.aclose()
        listening.close()
    read = json.loads(next(line for line in json_lines if "context is unknown" in line))
    assert "tenant" not in read and "job_id" not in read


@pytest.mark.anyio
async def test_readyz_tells_anyone_the_store_is_down_and_only_the_log_why(tmp_path, json_lines):
    """/readyz answers unauthenticated callers (probes): the Redis error's text, which names the store's address
    (and a Sentinel master), is logged for the operator, not returned."""
    gone = Store.connect(f"unix://{tmp_path}/no-redis.sock", Settings())
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(Settings(), store=gone)),
                                     base_url="http://heavy.test") as client:
            response = await client.get("/readyz")
    finally:
        await gone.aclose()
    assert response.status_code == 503 and "no-redis.sock" not in response.text, response.text
    assert response.json()["redis"] == "the job store does not answer"
    assert any("no-redis.sock" in json.loads(line)["msg"] for line in json_lines), json_lines


@pytest.mark.anyio
async def test_a_job_taken_over_from_its_worker_is_named_in_that_workers_warning(store, json_lines):
    """The lease renewer, which serves all a worker's jobs, warns when another worker took one over (this one
    stalled past its lease): the line names the job, by field too, as the job's own lines do, not only its queue
    entry."""
    job, _ = await store.jobs.submit("acme", question=JOB["question"], mode="report",
                                     params=JobCreate(**JOB).resolve(WORKER_SETTINGS))
    held = ScriptedBackend(researcher, gate=asyncio.Event())  # its requests never answer
    stop = asyncio.Event()
    running = asyncio.create_task(Worker(store, held, executor(), WORKER_SETTINGS, name="stalled").run(stop))
    try:
        await wait_for(lambda: asyncio.sleep(0, result=bool(held.requests)))
        assert await store.queue.claim_abandoned("rescuer", lease_ms=0)  # as if its lease had run out
        await wait_for(lambda: asyncio.sleep(0, result=any("taken over" in line for line in json_lines)))
    finally:
        stop.set()
        await running
    warning = json.loads(next(line for line in json_lines if "taken over" in line))
    assert warning["job_id"] == job.id and job.id in warning["msg"], warning
