"""Paging through the job list by its links, on the app over a real redis-server: a page's place holds while jobs
are submitted or deleted between two reads (the links carry a cursor), `prev` walks back the same pages, and
`offset` still pages by position for clients that build their own URLs."""

import pytest

from tests.heavy.api_helpers import app_for, client_for

pytestmark = pytest.mark.anyio

HELD = {"question": "Which Python module parses command-line options?", "trajectories": 2, "max_steps": 3,
        "review": True}  # held for review: no concurrency slot, so a tenant may have many


@pytest.fixture
async def acme(store):
    key = await store.tenants.create_key("acme")
    async with client_for(app_for(store), key.secret) as client:
        yield client


async def submit(client) -> str:
    response = await client.post("/v1/jobs", json=HELD)
    assert response.status_code == 202, response.text
    return response.json()["id"]


async def read(client, url: str) -> dict:
    response = await client.get(url)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("status", [None, "awaiting_approval", "awaiting_approval,cancelled"])
async def test_following_next_repeats_and_skips_no_job_as_jobs_come_and_go(acme, status):
    made = [await submit(acme) for _ in range(7)]
    query = "limit=2" + (f"&status={status}" if status else "")
    first = await read(acme, f"/v1/jobs?{query}")
    seen = [job["id"] for job in first["jobs"]]
    assert seen == made[:-3:-1] and first["offset"] == 0 and "prev" not in first["links"]

    newer = await submit(acme)  # above the pages read: an offset's next page would show the last one read again
    second = await read(acme, first["links"]["next"])
    seen += [job["id"] for job in second["jobs"]]
    assert seen == made[:-5:-1]
    assert second["offset"] == 3 and second["total"] == 8  # counted as it is read: the new job is above

    assert (await acme.post(f"/v1/jobs/{made[-1]}/cancel")).status_code == 200
    assert (await acme.delete(f"/v1/jobs/{made[-1]}")).status_code == 204  # an offset's next page would skip one
    page, pages = second, [first, second]
    while "next" in page["links"]:
        page = await read(acme, page["links"]["next"])
        pages.append(page)
        seen += [job["id"] for job in page["jobs"]]
    assert seen == made[::-1]  # newest first, each once

    back, url = [], pages[-1]["links"].get("prev")  # and back: the same pages, the deleted job gone, the new one shown
    while url:
        page = await read(acme, url)
        back.append([job["id"] for job in page["jobs"]])
        url = page["links"].get("prev")
    assert [job for ids in back[::-1] for job in ids] == [newer, *made[-2::-1]][: -len(pages[-1]["jobs"])]
    assert back[-1][0] == newer and page["offset"] == 0


async def test_an_offset_still_pages_by_position_and_a_bad_cursor_is_refused(acme):
    made = [await submit(acme) for _ in range(5)]
    page = await read(acme, "/v1/jobs?offset=1&limit=2")
    assert [job["id"] for job in page["jobs"]] == made[-2:-4:-1] and page["offset"] == 1
    assert page["links"]["self"] == "/v1/jobs?offset=1&limit=2"
    following = await read(acme, page["links"]["next"])
    assert [job["id"] for job in following["jobs"]] == made[-4::-1] and "next" not in following["links"]
    assert [job["id"] for job in (await read(acme, page["links"]["prev"]))["jobs"]] == made[-1:]
    assert (await read(acme, following["links"]["self"])) == following  # a cursor's page, read again

    for query in ("cursor=bogus", "cursor=b2xkZXI", f"cursor={following['links']['self'].split('cursor=')[1]}"
                                                    "&offset=1"):
        refused = await acme.get(f"/v1/jobs?{query}")
        assert refused.status_code == 422 and "cursor" in refused.json()["error"]["message"], refused.text
