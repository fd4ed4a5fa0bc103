"""The services' logs are JSON lines: every line `heavy serve` writes parses (uvicorn's included), and a message
holding a quote, which a tenant's callback URL can put there, or a traceback stays one record."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from heavy.api.models import JobCreate
from heavy.logs import JsonLines
from heavy.store.records import DONE
from heavy.tools.ssrf import SsrfGuard
from heavy.webhooks import deliver
from tests.heavy.worker_helpers import WORKER_SETTINGS

REPO = Path(__file__).resolve().parents[2]
SERVE_S = 60


def test_every_line_heavy_serve_logs_is_one_json_object(redis_url, free_tcp_port, tmp_path):
    env = {**os.environ, "HEAVY_REDIS_URL": redis_url, "HEAVY_HOME": str(tmp_path)}
    log = tmp_path / "serve.log"
    with log.open("w") as stderr:
        # from the repository: this checkout's heavy, not the one the `heavy` script was installed from
        serve = subprocess.Popen([sys.executable, "-c", "from heavy.cli import app; app()", "serve", "--port",
                                  str(free_tcp_port)], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + SERVE_S
        while True:
            assert serve.poll() is None and time.monotonic() < deadline, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{free_tcp_port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        httpx.get(f"http://127.0.0.1:{free_tcp_port}/v1/jobs/%22%0a")  # a 401, in the access log
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(SERVE_S)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert any("GET /healthz" in r["msg"] for r in records) and any("401" in r["msg"] for r in records), records


@pytest.fixture
def json_lines():
    """What the webhooks' logger writes, formatted as the services format it."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.setFormatter(JsonLines())
    handler.emit = lambda record: lines.append(handler.format(record))
    logger = logging.getLogger("heavy.webhooks")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)


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
