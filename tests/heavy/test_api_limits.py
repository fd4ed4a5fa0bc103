"""A tenant's limits as a client meets them, on the API in processes of its own over real Redis: each refusal says
when to try again (Retry-After), and a tenant's open event streams are capped over all API processes, each place
freed however its stream ends (the job's end, the client leaving, its API process killed)."""

import httpx
import pytest

from tests.heavy.worker_helpers import JOB, spawn, stop, wait_api_ready, wait_for
from tests.net import free_port
from tests.openapi_contract import Contract

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

STREAMS_OF_TWO = {"HEAVY_TENANT_MAX_STREAMS": "2"}


async def test_a_tenants_event_streams_are_capped_over_api_processes_and_freed_however_they_end(service, store):
    await service.start_api_again(env=STREAMS_OF_TWO)
    other = spawn("api", service.redis_url, service.key_prefix, str(port := free_port()), env=STREAMS_OF_TWO)
    other_url = f"http://127.0.0.1:{port}"
    acme, globex = [(await store.tenants.create_key(tenant)).secret for tenant in ("acme", "globex")]
    service.model_gate.clear()  # the jobs run, and their streams stay open, until the test lets the model go
    try:
        await wait_api_ready(other_url)
        async with httpx.AsyncClient(timeout=30) as client:
            job_id = await _submit(client, service.url, acme)
            rival_job_id = await _submit(client, service.url, globex)
            events = f"/v1/jobs/{job_id}/events"
            first = await _open(client, service.url + events, acme)
            second = await _open(client, other_url + events, acme)
            assert first.status_code == second.status_code == 200
            contract = Contract((await client.get(f"{service.url}/openapi.json")).json())
            for url in (service.url, other_url):  # two open, one on each process: both processes refuse a third
                refused = contract.check("GET", "/v1/jobs/{job_id}/events", await _refused(client, url + events, acme))
                assert refused.status_code == 429
                assert refused.json()["error"]["code"] == "quota_exceeded"
                assert "limit of 2 open event streams" in refused.json()["error"]["message"]
                assert 1 <= int(refused.headers["retry-after"]) <= 30  # at the latest, a dead process's lapse
            rival = await _open(client, service.url + f"/v1/jobs/{rival_job_id}/events", globex)
            assert rival.status_code == 200  # another tenant's count

            await first.aclose()  # the client leaves: its place is free again
            third = await wait_for(lambda: _opened(client, service.url + events, acme), timeout_s=30)

            stop(other)  # SIGKILL with `second` open: its lease is renewed no more and lapses
            assert (await _refused(client, service.url + events, acme)).status_code == 429
            fourth = await wait_for(lambda: _opened(client, service.url + events, acme), timeout_s=60, interval_s=1)

            service.model_gate.set()  # the jobs end, and with them their streams: no place is held after
            for response in (third, fourth, rival):
                await response.aread()
            await wait_for(lambda: _no_stream_counted(store, "acme"), timeout_s=30)
            await wait_for(lambda: _no_stream_counted(store, "globex"), timeout_s=30)
    finally:
        stop(other)
        service.model_gate.set()


async def test_each_refusal_at_a_limit_says_when_it_would_succeed(service, store):
    await service.start_api_again(env={"HEAVY_TENANT_MAX_HELD_JOBS": "1", "HEAVY_APPROVAL_WINDOW_S": "600"})
    key = (await store.tenants.create_key("acme")).secret
    async with httpx.AsyncClient(base_url=service.url, headers=_auth(key), timeout=30) as client:
        held = await client.post("/v1/jobs", json={**JOB, "review": True})
        assert held.status_code == 202, held.text
        # the held job frees its place when its approval window runs out (and a worker's sweep sees it)
        refused = await client.post("/v1/jobs", json={**JOB, "review": True})
        assert refused.status_code == 429, refused.text
        assert 590 <= int(refused.headers["retry-after"]) <= 605

        # tokens spent with none reserved for a running job: only an operator raising the limit helps
        await store.tenants.set_limits("acme", max_tokens=1000)
        await store.redis.hset(store.jobs.keys.tenant("acme"), "tokens_used", 1000)
        spent = await client.post("/v1/jobs", json=JOB)
        assert spent.status_code == 429 and spent.headers["retry-after"] == "3600", spent.text


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _submit(client: httpx.AsyncClient, url: str, key: str) -> str:
    submitted = await client.post(f"{url}/v1/jobs", json=JOB, headers=_auth(key))
    assert submitted.status_code == 202, submitted.text
    return submitted.json()["id"]


async def _open(client: httpx.AsyncClient, url: str, key: str) -> httpx.Response:
    """An event stream opened, left open (the caller closes it or reads it to its end)."""
    return await client.send(client.build_request("GET", url, headers=_auth(key)), stream=True)


async def _refused(client: httpx.AsyncClient, url: str, key: str) -> httpx.Response:
    """The answer to opening an event stream that should be refused (read whole; closed at once if it was not)."""
    response = await _open(client, url, key)
    await (response.aclose() if response.status_code == 200 else response.aread())
    return response


async def _opened(client: httpx.AsyncClient, url: str, key: str) -> httpx.Response | None:
    response = await _open(client, url, key)
    if response.status_code == 200:
        return response
    await response.aclose()
    return None


async def _no_stream_counted(store, tenant: str) -> bool:
    return await store.redis.zcard(store.jobs.keys.tenant_streams(tenant)) == 0

