"""The REST API against its own /openapi.json, as a client generated from it meets the API: every documented
operation called the ways a client calls it and the ways one goes wrong, on the API in a process of its own over
real Redis (the `service` fixture, its worker's scripted model held or let go). Each response's status must be one
the operation documents, its content type one documented for that status, its body valid against that schema."""

import asyncio
import json
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from heavy.store import Store
from tests.heavy.api_helpers import parse_sse
from tests.heavy.worker_helpers import JOB, WORKER_SETTINGS, ended, spawn, stop, wait_for
from tests.net import free_port
from tests.openapi_contract import Contract

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

JOBS, JOB_PATH = "/v1/jobs", "/v1/jobs/{job_id}"
UNKNOWN_ID = "0" * 32


async def test_every_documented_operation_answers_as_documented(service, store):
    key = (await store.tenants.create_key("acme")).secret
    async with httpx.AsyncClient(base_url=service.url, headers={"Authorization": f"Bearer {key}"},
                                 timeout=30) as client:
        contract = Contract((await client.get("/openapi.json")).json())

        async def call(method: str, template: str, job_id: str = UNKNOWN_ID, **kwargs) -> httpx.Response:
            return contract.check(method, template, await client.request(method, template.format(job_id=job_id),
                                                                          **kwargs))

        for path in ("/healthz", "/readyz", "/metrics", "/v1/version"):
            assert (await call("GET", path)).status_code == 200

        # submit: created, replayed, and each way a body or its sender is refused
        created = await call("POST", JOBS, json=JOB, headers={"Idempotency-Key": "k1"})
        assert created.status_code == 202 and created.headers["location"] == f"{JOBS}/{created.json()['id']}"
        done_id = created.json()["id"]
        replay = await call("POST", JOBS, json=JOB, headers={"Idempotency-Key": "k1"})
        assert replay.status_code == 202 and replay.json()["id"] == done_id
        assert (await call("POST", JOBS, json={**JOB, "question": "other"},
                           headers={"Idempotency-Key": "k1"})).status_code == 409
        for refused, status in [({**JOB, "colour": "red"}, 422), ({**JOB, "trajectories": "3"}, 422),
                                ({**JOB, "step_tokens": 600, "trajectory_tokens": 300}, 422), ([], 422), ({}, 422)]:
            assert (await call("POST", JOBS, json=refused)).status_code == status, refused
        for content, headers, status in [
            (b'{"question": ', {"Content-Type": "application/json"}, 422),
            (b'{"question": "caf\xe9"}', {"Content-Type": "application/json"}, 400),  # no UTF-8
            (json.dumps(JOB).encode(), {"Content-Type": "text/plain"}, 415),
            (b'{"question": "' + b"x" * WORKER_SETTINGS.max_request_bytes + b'"}', {}, 413),
            (json.dumps(JOB).encode(), {"Authorization": "Bearer wrong"}, 401),
            (json.dumps(JOB).encode(), {"Authorization": "Basic d3Jvbmc="}, 401),
        ]:
            assert (await call("POST", JOBS, content=content, headers=headers)).status_code == status, content[:40]

        await wait_for(lambda: ended(store, done_id), timeout_s=60)
        for accept in ("application/json", "text/markdown", "text/html", "*/*"):
            assert (await call("GET", f"{JOB_PATH}/report", done_id, headers={"Accept": accept})).status_code == 200
        assert (await call("GET", f"{JOB_PATH}/report", done_id, headers={"Accept": "image/png"})).status_code == 406
        events = await call("GET", f"{JOB_PATH}/events", done_id)
        assert events.status_code == 200 and parse_sse(events.text)[-1]["event"] == "report_ready"
        assert (await call("GET", f"{JOB_PATH}/events", done_id, headers={"Last-Event-ID": str(2**64)})).status_code \
            == 422
        for action in ("cancel", "finish", "approve"):
            assert (await call("POST", f"{JOB_PATH}/{action}", done_id)).status_code == 409, action

        # jobs held by the model: a running job's report, its finish and cancel, the tenant's limit of 3
        service.model_gate.clear()
        running = [(await call("POST", JOBS, json=JOB)).json()["id"] for _ in range(3)]
        at_limit = await call("POST", JOBS, json=JOB)
        # a slot frees when one of the jobs ends, which nobody knows beforehand: the bound
        assert at_limit.status_code == 429 and at_limit.headers["retry-after"] == "15"
        held = (await call("POST", JOBS, json={**JOB, "review": True, "mode": "answer"})).json()["id"]
        approved_at_limit = await call("POST", f"{JOB_PATH}/approve", held)
        assert approved_at_limit.status_code == 429 and approved_at_limit.headers["retry-after"] == "15"
        assert (await call("GET", f"{JOB_PATH}/report", running[0])).status_code == 409
        assert (await call("DELETE", JOB_PATH, running[0])).status_code == 409
        await wait_for(lambda: _running(store, running[0]))
        assert (await call("POST", f"{JOB_PATH}/finish", running[0])).status_code == 200
        for job_id in running[1:]:
            assert (await call("POST", f"{JOB_PATH}/cancel", job_id)).status_code == 200
        service.model_gate.set()  # the finished job's report pass goes through the model too
        await wait_for(lambda: _all_ended(store, running), timeout_s=60)
        assert (await call("GET", f"{JOB_PATH}/report", running[0])).json()["partial"]
        assert (await call("POST", f"{JOB_PATH}/approve", held)).status_code == 200
        await wait_for(lambda: ended(store, held), timeout_s=60)
        assert (await call("GET", f"{JOB_PATH}/report", held)).json()["mode"] == "answer"

        # read, list, delete
        assert (await call("GET", JOB_PATH, done_id)).status_code == 200
        for params, status in [({}, 200), ({"status": "done,cancelled", "limit": 2, "offset": 1}, 200),
                               ({"status": "active"}, 200), ({"status": "bogus"}, 422), ({"limit": 0}, 422)]:
            assert (await call("GET", JOBS, params=params)).status_code == status, params
        first = (await call("GET", JOBS, params={"limit": 1})).json()
        cursor = parse_qs(urlsplit(first["links"]["next"]).query)["cursor"][0]  # the next page, as a client asks
        following = (await call("GET", JOBS, params={"cursor": cursor, "limit": 1})).json()
        assert following["offset"] == 1 and following["links"]["prev"].startswith(f"{JOBS}?cursor=")
        for params in ({"cursor": "bogus"}, {"cursor": cursor, "offset": 1}):
            assert (await call("GET", JOBS, params=params)).status_code == 422, params
        assert (await call("DELETE", JOB_PATH, done_id)).status_code == 204
        for method, template in sorted(contract.operations()):
            if "{job_id}" in template:
                assert (await call(method, template, done_id)).status_code == 404, (method, template)
                assert (await call(method, template, "not-an-id")).status_code == 422, (method, template)
            if template.startswith(JOBS):
                response = await call(method, template, done_id, headers={"Authorization": ""})
                assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"

        assert {(method, template) for method, template, _ in contract.seen} == contract.operations()
        error_schemas = {json.dumps(response["content"]["application/json"]["schema"])
                         for path, item in contract.spec["paths"].items() if path.startswith(JOBS)
                         for operation in item.values()
                         for status, response in operation["responses"].items() if int(status) >= 400}
        assert error_schemas == {'{"$ref": "#/components/schemas/ErrorBody"}'}  # one error shape everywhere
        assert not contract.unseen_success_media()


async def test_a_store_outage_answers_as_documented(redis_server, tmp_path):
    """With the job store unreachable, /readyz and the job routes answer with the statuses and bodies they
    document (503), not an undeclared 500."""
    port = free_port()
    gone = f"unix://{tmp_path}/no-redis.sock"
    api = spawn("api", gone, "outage:", str(port))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                     headers={"Authorization": "Bearer some-key"}, timeout=30) as client:
            await wait_for(lambda: _answers(client), timeout_s=30)
            contract = Contract((await client.get("/openapi.json")).json())
            not_ready = contract.check("GET", "/readyz", await client.get("/readyz"))
            assert not_ready.status_code == 503 and not_ready.headers["retry-after"] == "5"
            assert contract.check("GET", "/healthz", await client.get("/healthz")).status_code == 200
            job_routes = sorted((method, template) for method, template in contract.operations()
                                if template.startswith(JOBS))
            # at once: each request first rides out the store's reconnection backoff (a few seconds)
            responses = await asyncio.gather(*(
                client.request(method, template.format(job_id=UNKNOWN_ID), json=JOB if method == "POST" else None)
                for method, template in job_routes))
            for (method, template), response in zip(job_routes, responses, strict=True):
                assert contract.check(method, template, response).status_code == 503, (method, template)
                assert response.headers["retry-after"] == "5", (method, template)
    finally:
        stop(api)


async def _answers(client: httpx.AsyncClient) -> bool:
    try:
        return (await client.get("/healthz")).status_code == 200
    except httpx.TransportError:
        return False


async def _running(store: Store, job_id: str) -> bool:
    return (await store.jobs.get(job_id)).status == "running"


async def _all_ended(store: Store, job_ids: list[str]) -> bool:
    return all(await asyncio.gather(*(ended(store, job_id) for job_id in job_ids)))

