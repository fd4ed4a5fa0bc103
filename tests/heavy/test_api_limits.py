"""A tenant's limits as a client meets them, on the API in a process of its own over real Redis: each refusal says
when to try again (Retry-After)."""

import httpx
import pytest

from tests.heavy.worker_helpers import JOB

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

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
