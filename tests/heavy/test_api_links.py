"""The URLs the API gives, on the API in a process of its own over real Redis: a job list's pages link to the next
and previous ones (the query kept), and behind a proxy that serves the API under a prefix (HEAVY_API_ROOT_PATH, the
ASGI root_path uvicorn is given; the proxy strips the prefix from what it passes on) every URL it gives carries the
prefix."""

import httpx
import pytest

from tests.heavy.worker_helpers import JOB
from tests.openapi_contract import Contract

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

PREFIX = "/research"


async def test_pages_link_on_and_every_url_carries_the_proxys_prefix(service, store):
    await service.start_api_again(env={"HEAVY_API_ROOT_PATH": PREFIX})
    key = (await store.tenants.create_key("acme")).secret
    async with httpx.AsyncClient(base_url=service.url, headers={"Authorization": f"Bearer {key}"},
                                 timeout=30) as client:
        contract = Contract((await client.get("/openapi.json")).json())
        held = []
        for _ in range(6):
            created = contract.check("POST", "/v1/jobs", await client.post("/v1/jobs", json={**JOB, "review": True}))
            assert created.status_code == 202, created.text
            job_id = created.json()["id"]
            assert created.headers["location"] == f"{PREFIX}/v1/jobs/{job_id}"
            assert created.json()["links"] == {"self": f"{PREFIX}/v1/jobs/{job_id}",
                                               "events": f"{PREFIX}/v1/jobs/{job_id}/events",
                                               "report": f"{PREFIX}/v1/jobs/{job_id}/report"}
            held.append(job_id)
        shown = await client.get(proxied(created.headers["location"]))
        assert shown.status_code == 200 and shown.json()["links"]["self"] == created.headers["location"]

        listed, pages, url = [], [], f"{PREFIX}/v1/jobs?status=awaiting_approval&limit=4"
        while url:
            page = contract.check("GET", "/v1/jobs", await client.get(proxied(url))).json()
            pages.append(page["links"])
            listed += [job["id"] for job in page["jobs"]]
            url = page["links"].get("next")
        assert listed == held[::-1]  # newest first, each once
        cursor = pages[0]["next"].split("cursor=")[1].split("&")[0]  # opaque: the links hold it
        assert pages == [
            {"self": f"{PREFIX}/v1/jobs?offset=0&limit=4&status=awaiting_approval",
             "next": f"{PREFIX}/v1/jobs?cursor={cursor}&limit=4&status=awaiting_approval"},
            {"self": f"{PREFIX}/v1/jobs?cursor={cursor}&limit=4&status=awaiting_approval",
             "prev": pages[1]["prev"]}]
        assert pages[1]["prev"].startswith(f"{PREFIX}/v1/jobs?cursor=")
        assert pages[1]["prev"].endswith("&limit=4&status=awaiting_approval")

        # /docs, under the prefix too, gets its own policy (Swagger UI starts from an inline script)
        docs = await client.get("/docs")
        assert docs.status_code == 200 and docs.headers["content-security-policy"] == "frame-ancestors 'none'"
        assert f"{PREFIX}/openapi.json" in docs.text


def proxied(url: str) -> str:
    """What the proxy passes on of a request for `url`: the path without its prefix."""
    assert url.startswith(f"{PREFIX}/"), url
    return url.removeprefix(PREFIX)
