"""Job callbacks against a real loopback receiver and real Redis: a job run by a worker is POSTed there, signed,
when it ends; a cancelled queued job from the API; retries on 5xx, none on 4xx; the SSRF guard refuses private
targets that the deployment did not allow (no request leaves for them); bad callback fields are 422s."""

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from heavy import webhooks
from heavy.api.models import JobCreate
from heavy.embedded_redis import EmbeddedRedis
from heavy.store import Keys, Store
from heavy.store.records import DONE
from heavy.tools.ssrf import AllowedTarget, SsrfGuard
from heavy.webhooks import EVENT, SIGNATURE_HEADER, TIMESTAMP_HEADER, deliver, signed_headers
from heavy.worker import Worker
from tests.heavy.api_helpers import app_for, client_for
from tests.heavy.fakes import ScriptedBackend
from tests.heavy.worker_helpers import JOB, WORKER_SETTINGS, executor, researcher, spawn, stop, wait_for

pytestmark = pytest.mark.anyio
SECRET = "s3cret-of-sixteen+"


class Receiver:
    """A callback receiver on 127.0.0.1 answering each POST with the next of `statuses` (then 200); a None there
    answers nothing until the receiver closes, a (status, seconds) pair sends Retry-After: seconds. `on_post` is
    called as a POST arrives, before it is answered."""

    def __init__(self, statuses: tuple[int | tuple[int, str] | None, ...] = (),
                 on_post: Callable[[], None] = lambda: None) -> None:
        self.statuses, self.received, self.on_post = list(statuses), [], on_post
        self.closing = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                owner.received.append((dict(self.headers), body))
                owner.on_post()
                status = owner.statuses.pop(0) if owner.statuses else 200
                if status is None:
                    owner.closing.wait(60)
                    return
                status, retry_after = status if isinstance(status, tuple) else (status, None)
                self.send_response(status)
                if retry_after is not None:
                    self.send_header("Retry-After", retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.allow = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = []

    def make(*statuses: int) -> Receiver:
        made.append(Receiver(statuses))
        return made[-1]
    yield make
    for r in made:
        r.close()


def settings_allowing(receiver: Receiver):
    return WORKER_SETTINGS.model_copy(update={"webhook_allow": (receiver.allow,), "webhook_attempts": 3})


async def test_a_job_a_worker_ends_is_posted_signed_to_its_callback(store, receiver, caplog):
    caplog.set_level(logging.DEBUG)  # the secret is in no log line, at any level
    hook = receiver()
    settings = settings_allowing(hook)
    key = await store.tenants.create_key("acme")
    stop = asyncio.Event()
    worker = asyncio.create_task(Worker(store, ScriptedBackend(researcher), executor(), settings, name="w").run(stop))
    try:
        async with client_for(app_for(store, settings), key.secret) as client:
            job = (await client.post("/v1/jobs", json={**JOB, "callback_url": hook.url,
                                                       "callback_secret": SECRET})).json()
            assert job["callback_url"] == hook.url and "callback_secret" not in job
            await wait_for(lambda: _callback_status(store, job["id"]))
            shown = (await client.get(f"/v1/jobs/{job['id']}")).json()
    finally:
        stop.set()
        await worker
    (headers, body), = hook.received
    sent = json.loads(body)
    assert sent["type"] == EVENT and sent["job"]["id"] == job["id"] and sent["job"]["status"] == DONE
    assert sent["links"]["report"] == f"/v1/jobs/{job['id']}/report"
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER] == expected and headers["X-Heavy-Event"] == EVENT
    verify = documented_verification()
    assert verify(SECRET, headers, body)  # the timestamped signature, as docs/webhooks.md tells receivers to check it
    assert not verify(SECRET, headers, body + b" ") and not verify("another-secret-16", headers, body)
    assert not verify(SECRET, {**headers, **signed_headers(SECRET, body, time.time() - 3600)}, body)  # an old capture
    restamped = {**headers, TIMESTAMP_HEADER: str(int(headers[TIMESTAMP_HEADER]) + 1)}
    assert not verify(SECRET, restamped, body)  # its timestamp made fresh: the signature no longer matches
    assert shown["callback_status"] == "delivered: HTTP 200 after 1 attempt(s)"
    assert SECRET not in caplog.text and SECRET not in repr(await store.jobs.get(job["id"]))
    assert SECRET not in repr(JobCreate(**JOB, callback_url=hook.url, callback_secret=SECRET))


def documented_verification():
    """The `verify` function docs/webhooks.md gives receivers, run as they would copy it."""
    doc = (Path(__file__).parents[2] / "docs" / "webhooks.md").read_text()
    namespace: dict = {}
    exec(doc.split("```python\n")[1].split("```")[0], namespace)  # noqa: S102 (our own docs)
    return namespace["verify"]


async def _callback_status(store, job_id: str) -> str:
    """How the callback went, once it went ("pending" until it is claimed, "sending" while it is out)."""
    status = (await store.jobs.get(job_id)).callback_status
    return "" if status in ("pending", "sending") else status


@pytest.mark.slow
async def test_a_callback_whose_sender_died_mid_post_is_sent_by_another_worker(store, receiver, redis_url, key_prefix):
    hook = receiver(None)  # the first POST gets no answer: its sender is killed while it waits
    settings = settings_allowing(hook).model_copy(update={"webhook_timeout_s": 5.0, "webhook_attempts": 1})
    job, _ = await store.jobs.submit("acme", question=JOB["question"], mode="report", callback_url=hook.url,
                                     params={"trajectories": 1, "max_steps": 4, "step_tokens": 64,
                                             "trajectory_tokens": 10_000, "job_tokens": 50_000, "deadline_s": 60,
                                             "tools": ["search"]})
    doomed = spawn("worker", redis_url, key_prefix, "doomed",
                   env={"HEAVY_WEBHOOK_ALLOW": json.dumps([hook.allow]), "HEAVY_WEBHOOK_TIMEOUT_S": "5",
                        "HEAVY_WEBHOOK_ATTEMPTS": "1"})
    try:
        await wait_for(lambda: asyncio.sleep(0, hook.received), timeout_s=60)
    finally:
        stop(doomed)  # SIGKILL while its POST waits for an answer
    assert (await store.jobs.get(job.id)).callback_status == "sending"
    halt = asyncio.Event()
    rescuer = asyncio.create_task(Worker(store, ScriptedBackend(researcher), executor(), settings, name="r").run(halt))
    try:  # its sweep finds the callback once the dead sender's lease (2 x 5 s) has run out
        outcome = await wait_for(lambda: _callback_status(store, job.id), timeout_s=60)
    finally:
        halt.set()
        await rescuer
    assert outcome == "delivered: HTTP 200 after 1 attempt(s)"
    first, second = (json.loads(body) for _, body in hook.received)
    assert first == second and first["job"]["id"] == job.id and first["job"]["status"] == DONE
    assert await store.jobs.due_callbacks() == []  # settled


async def test_a_lease_renewal_while_the_callback_is_out_leaves_the_send_alone(store, receiver, monkeypatch, caplog):
    """The worker acknowledges a job's entry, then sends its callback: a lease renewal meanwhile took the acked
    entry for one another worker had taken over, logged so (a false alarm) and cancelled the send, which only the
    sweep sent again, a delivery lease (minutes) later."""
    hook = receiver(None)  # the first POST is held until the test lets it go (then a 200 on the retry)
    settings = settings_allowing(hook)
    renewals, renew = [], store.queue.renew

    async def counted_renew(consumer, entry_ids, **options):
        renewals.append(entry_ids)
        return await renew(consumer, entry_ids, **options)

    monkeypatch.setattr(store.queue, "renew", counted_renew)
    job, _ = await store.jobs.submit("acme", question=JOB["question"], mode="report",
                                     params=JobCreate(**JOB).resolve(settings), callback_url=hook.url)
    stop = asyncio.Event()
    worker = asyncio.create_task(Worker(store, ScriptedBackend(researcher), executor(), settings, name="w").run(stop))
    try:
        await wait_for(lambda: asyncio.sleep(0, result=hook.received))  # acked, its callback out
        held_at = len(renewals)
        await wait_for(lambda: asyncio.sleep(0, result=len(renewals) > held_at))  # a renewal while it is out
        hook.closing.set()
        outcome = await wait_for(lambda: _callback_status(store, job.id))
    finally:
        stop.set()
        await worker
    assert outcome == "delivered: HTTP 200 after 2 attempt(s)"
    assert "taken over" not in caplog.text


async def test_a_lease_renewal_sent_before_the_ack_and_answered_after_it_leaves_the_send_alone(
        store, receiver, monkeypatch, caplog):
    """A renewal out as the entry is acknowledged names it (it was not acked yet), and Redis, running it after the
    ack, answers it is no longer this worker's: the worker took that for a takeover (seen in a soak, a few jobs in a
    thousand) and cancelled the callback's send, which only the sweep sent again, a delivery lease later."""
    hook = receiver(None)  # the first POST is held until the test lets it go (then a 200 on the retry)
    settings = settings_allowing(hook)
    renewing, acked, renew, ack, lost = asyncio.Event(), asyncio.Event(), store.queue.renew, store.queue.ack, []

    async def renew_answered_after_the_ack(consumer, entry_ids, **lease):
        if entry_ids:
            renewing.set()  # the job, held until now, ends
            await acked.wait()
        answer = await renew(consumer, entry_ids, **lease)
        lost.extend(answer)
        return answer

    async def ack_then_tell(entry_id):
        await ack(entry_id)
        acked.set()

    monkeypatch.setattr(store.queue, "renew", renew_answered_after_the_ack)
    monkeypatch.setattr(store.queue, "ack", ack_then_tell)
    job, _ = await store.jobs.submit("acme", question=JOB["question"], mode="report",
                                     params=JobCreate(**JOB).resolve(settings), callback_url=hook.url)
    stop = asyncio.Event()
    backend = ScriptedBackend(researcher, aggregator_gate=renewing)
    worker = asyncio.create_task(Worker(store, backend, executor(), settings, name="w").run(stop))
    try:
        await wait_for(lambda: asyncio.sleep(0, result=lost))  # the renewal out across the ack came back
        await wait_for(lambda: asyncio.sleep(0, result=hook.received))
        hook.closing.set()
        outcome = await wait_for(lambda: _callback_status(store, job.id))
    finally:
        stop.set()
        await worker
    assert outcome == "delivered: HTTP 200 after 2 attempt(s)"
    assert "taken over" not in caplog.text


async def test_a_queued_job_cancelled_through_the_api_is_posted_from_the_api(store, receiver):
    hook = receiver()
    settings = settings_allowing(hook)
    key = await store.tenants.create_key("acme")
    async with client_for(app_for(store, settings), key.secret) as client:
        job = (await client.post("/v1/jobs", json={**JOB, "callback_url": hook.url})).json()
        await client.post(f"/v1/jobs/{job['id']}/cancel")
        await wait_for(lambda: _callback_status(store, job["id"]))
        await client.post(f"/v1/jobs/{job['id']}/cancel")  # again: a no-op, and no second callback
        assert await deliver(store.jobs, job["id"], settings) is None  # as a worker's late try would be
    (headers, body), = hook.received
    assert json.loads(body)["job"]["status"] == "cancelled" and SIGNATURE_HEADER not in headers  # no secret given


@pytest.mark.parametrize("statuses, outcome, posts", [
    ((503,), "delivered: HTTP 200 after 2 attempt(s)", 2),
    ((500, 502, 503), "undelivered: HTTP 503 after 3 attempt(s)", 3),
    ((410,), "rejected: HTTP 410 after 1 attempt(s)", 1),
])
async def test_retries_on_server_errors_and_not_on_a_refusal(store, receiver, statuses, outcome, posts):
    hook = receiver(*statuses)
    job, _ = await store.jobs.submit("acme", question="q", mode="report", params={"trajectories": 1},
                                     callback_url=hook.url)
    await store.jobs.finish(job, DONE)
    assert await deliver(store.jobs, job.id, settings_allowing(hook)) == outcome
    assert len(hook.received) == posts and (await store.jobs.get(job.id)).callback_status == outcome


async def test_redis_lost_while_a_callback_is_out_neither_raises_nor_loses_the_callback(
        tmp_path_factory, key_prefix, monkeypatch, caplog):
    """`deliver` runs after the worker's ack: raising there skipped the job's finished-jobs metric and log line."""
    monkeypatch.setattr("heavy.store.RECONNECT_RETRIES", 2)  # Redis down outlasts the store's retries at once
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    store = Store.connect(server.url, WORKER_SETTINGS, Keys(key_prefix))
    hook = Receiver(on_post=lambda: server.process.kill())  # Redis dies as the POST arrives
    try:
        settings = settings_allowing(hook)
        job, _ = await store.jobs.submit("acme", question="q", mode="report", params={"trajectories": 1},
                                         callback_url=hook.url)
        await store.jobs.finish(job, DONE)
        assert await deliver(store.jobs, job.id, settings) == "delivered: HTTP 200 after 1 attempt(s)"
        assert "callback sent but not recorded" in caplog.text
        server.process.wait()
        server.process = None
        assert await deliver(store.jobs, job.id, settings) is None  # Redis still down: not even claimed
        assert "callback not sent" in caplog.text
        server.start()  # from its AOF: the callback is still due, claimed until its lease runs out
        assert await store.redis.zscore(Keys(key_prefix).callbacks, job.id) is not None
        assert (await store.jobs.get(job.id)).callback_status == "sending" and len(hook.received) == 1
    finally:
        hook.close()
        await store.aclose()
        server.stop()


async def test_a_receiver_whose_first_address_is_unreachable_gets_the_post_at_its_next_checked_one(store, receiver):
    """As open_page does (a broken AAAA record): every attempt went to the first address alone, so the callback was
    never delivered. Both addresses are checked before any connection."""
    hook = receiver()
    port = int(hook.allow.rsplit(":", 1)[1])

    async def resolver(host, port):
        return ["::1", "127.0.0.1"]  # nothing listens on [::1] at the receiver's port

    guard = SsrfGuard([AllowedTarget("::1", port), AllowedTarget("127.0.0.1", port)], resolver=resolver)
    job, _ = await store.jobs.submit("acme", question="q", mode="report", params={"trajectories": 1},
                                     callback_url=f"http://hook.example:{port}/hook")
    await store.jobs.finish(job, DONE)
    settings = WORKER_SETTINGS.model_copy(update={"webhook_attempts": 1})
    assert await deliver(store.jobs, job.id, settings, guard) == "delivered: HTTP 200 after 1 attempt(s)"
    (headers, _), = hook.received
    assert headers["Host"] == f"hook.example:{port}"


@contextlib.contextmanager
def black_hole(address: str, port: int):
    """`address`:`port` taking no connection and refusing none: a listener whose backlog of one is full, and that
    never accepts, drops every further SYN, as a firewall that drops packets does (the client waits on its timeout)."""
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind((address, port))
        listener.listen(0)
        filler.connect((address, port))
        yield


async def test_a_receiver_whose_first_address_drops_connections_gets_the_post_at_its_next_checked_one(store, receiver):
    """A connection to the first address may take only a share of the attempt: it took the whole attempt (the
    client's connect timeout was `webhook_timeout_s`, as the attempt's own), so the next address was never tried."""
    hook = receiver()
    port = int(hook.allow.rsplit(":", 1)[1])

    async def resolver(host, port):
        return ["127.0.0.2", "127.0.0.1"]  # the receiver listens on 127.0.0.1 alone

    guard = SsrfGuard([AllowedTarget("127.0.0.2", port), AllowedTarget("127.0.0.1", port)], resolver=resolver)
    job, _ = await store.jobs.submit("acme", question="q", mode="report", params={"trajectories": 1},
                                     callback_url=f"http://hook.example:{port}/hook")
    await store.jobs.finish(job, DONE)
    settings = WORKER_SETTINGS.model_copy(update={"webhook_attempts": 1, "webhook_timeout_s": 4.0})
    with black_hole("127.0.0.2", port):
        assert await deliver(store.jobs, job.id, settings, guard) == "delivered: HTTP 200 after 1 attempt(s)"
    assert len(hook.received) == 1


async def test_a_receivers_retry_after_sets_the_pause_up_to_a_bound(store, receiver, monkeypatch):
    pauses, real_sleep = [], asyncio.sleep

    async def recorded_sleep(seconds, *args):
        pauses.append(seconds)
        await real_sleep(0)
    monkeypatch.setattr(webhooks.asyncio, "sleep", recorded_sleep)
    hook = receiver((429, "5"), (503, "120"))
    job, _ = await store.jobs.submit("acme", question="q", mode="report", params={"trajectories": 1},
                                     callback_url=hook.url)
    await store.jobs.finish(job, DONE)
    assert await deliver(store.jobs, job.id, settings_allowing(hook)) == "delivered: HTTP 200 after 3 attempt(s)"
    assert pauses == [5.0, webhooks.MAX_PAUSE_S]  # not the backoff's 1 and 2 s; 120 s is past the bound


async def test_an_attempt_to_a_receiver_trickling_its_answer_ends_within_the_webhook_timeout(store):
    """A receiver sending its answer a byte at a time beats every per-read timeout; the attempt as a whole must
    still end within `webhook_timeout_s`, or it outlasts the sender's lease and another worker sends it again."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length"))
        await reader.readexactly(length)
        with contextlib.suppress(ConnectionError):
            for byte in answer:  # the whole answer takes 20 times the timeout
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.25)
        writer.close()

    server = await asyncio.start_server(trickle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = WORKER_SETTINGS.model_copy(update={"webhook_allow": (f"127.0.0.1:{port}",), "webhook_attempts": 1,
                                                  "webhook_timeout_s": 0.5})
    job, _ = await store.jobs.submit("acme", question="q", mode="report", params={"trajectories": 1},
                                     callback_url=f"http://127.0.0.1:{port}/hook")
    await store.jobs.finish(job, DONE)
    async with server:
        outcome = await deliver(store.jobs, job.id, settings)
    assert outcome == "undelivered: failed after 1 attempt(s): the attempt took longer than 0.5 s"


@pytest.mark.parametrize("url, reason", [
    ("http://127.0.0.1:{port}/hook", "127.0.0.1, a loopback address"),  # the receiver itself, not allowed here
    ("http://169.254.169.254/latest/meta-data", "169.254.169.254, a cloud metadata address"),
    ("http://10.0.0.8/hook", "10.0.0.8, a private address"),
])
async def test_private_callbacks_are_refused_unless_allowed(store, receiver, url, reason):
    hook = receiver()
    url = url.format(port=hook.allow.rsplit(":", 1)[1])
    job, _ = await store.jobs.submit("acme", question="q", mode="report", params={"trajectories": 1},
                                     callback_url=url)
    await store.jobs.finish(job, DONE)
    outcome = await deliver(store.jobs, job.id, WORKER_SETTINGS)  # no allow-list
    assert outcome.startswith("not sent: refused") and reason in outcome and hook.received == []


@pytest.mark.parametrize("fields, message", [
    ({"callback_url": "ftp://example.com/x"}, "must be an http:// or https:// URL"),
    ({"callback_url": "https://user:pw@example.com/x"}, "must not carry credentials"),
    ({"callback_secret": SECRET}, "give callback_url too"),
    ({"callback_url": "https://example.com/x", "callback_secret": "short"}, "at least 16 characters"),
])
async def test_bad_callback_fields_are_422(store, fields, message):
    key = await store.tenants.create_key("acme")
    async with client_for(app_for(store), key.secret) as client:
        response = await client.post("/v1/jobs", json={**JOB, **fields})
    assert response.status_code == 422 and message in response.text
