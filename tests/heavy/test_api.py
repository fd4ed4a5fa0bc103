"""The REST API over a real redis-server (no worker here: jobs stay queued unless a test plays the worker):
every endpoint, JSON 4xx errors, idempotency, tenant isolation, quotas, review gate, cancel, report, SSE."""

import asyncio

import pytest
from prometheus_client import REGISTRY

from heavy.api import event_hub
from heavy.api.event_hub import EventHub
from heavy.api.routes_events import follow
from heavy.config import Settings
from heavy.store.records import DONE, PARTIAL, RUNNING
from tests.heavy.api_helpers import SETTINGS, app_for, client_for, parse_sse
from tests.heavy.worker_helpers import wait_for

pytestmark = pytest.mark.anyio

QUESTION = {"question": "Which Python module parses command-line options?", "trajectories": 2, "max_steps": 3}


@pytest.fixture
async def app(store):
    return app_for(store)


@pytest.fixture
async def acme(app, store):
    key = await store.tenants.create_key("acme")
    async with client_for(app, key.secret) as client:
        yield client


@pytest.fixture
async def globex(app, store):
    key = await store.tenants.create_key("globex")
    async with client_for(app, key.secret) as client:
        yield client


async def submit(client, **overrides):
    response = await client.post("/v1/jobs", json={**QUESTION, **overrides})
    assert response.status_code == 202, response.text
    return response.json()


def assert_error(response, status, code):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()["error"]
    assert body["code"] == code and body["message"]
    return body


async def test_ops_endpoints_and_openapi(app, acme):
    assert (await acme.get("/healthz")).json() == {"status": "ok"}
    assert (await acme.get("/readyz")).json() == {"status": "ready"}
    await acme.get("/v1/jobs")
    metrics = await acme.get("/metrics")
    assert metrics.status_code == 200 and 'heavy_api_requests_total{method="GET",route="/v1/jobs"' in metrics.text
    assert "heavy_queue_depth" in metrics.text
    for n in range(3):  # methods a client makes up add no label series
        await acme.request(f"MADEUP{n}", "/v1/jobs")
    metrics = (await acme.get("/metrics")).text
    assert "MADEUP" not in metrics
    assert 'heavy_api_requests_total{method="other",route="/v1/jobs",status="405"} 3.0' in metrics
    spec = (await acme.get("/openapi.json")).json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}/events", "/v1/jobs/{job_id}/report"} <= set(spec["paths"])
    assert (await acme.get("/docs")).status_code == 200


async def test_auth_is_required_and_revoked_keys_stop_working(app, store):
    async with client_for(app, None) as anonymous:
        body = assert_error(await anonymous.get("/v1/jobs"), 401, "unauthorized")
        assert "Bearer" in body["message"]
    async with client_for(app, "hv_not-a-key") as stranger:
        assert_error(await stranger.post("/v1/jobs", json=QUESTION), 401, "unauthorized")
    key = await store.tenants.create_key("acme")
    async with client_for(app, key.secret) as client:
        assert (await client.get("/v1/jobs")).status_code == 200
        await store.tenants.revoke(key.key_id)
        assert_error(await client.get("/v1/jobs"), 401, "unauthorized")


async def test_submit_get_and_list(acme):
    job = await submit(acme, tools=["search", "search"])
    assert job["status"] == "queued" and job["links"]["events"] == f"/v1/jobs/{job['id']}/events"
    assert job["params"]["trajectories"] == 2 and job["params"]["tools"] == ["search"]
    assert job["params"]["max_steps"] == 3 and job["params"]["job_tokens"] > 0  # defaults filled in
    fetched = (await acme.get(f"/v1/jobs/{job['id']}")).json()
    assert fetched["id"] == job["id"] and fetched["question"] == QUESTION["question"]
    second = await submit(acme, mode="answer")
    page = (await acme.get("/v1/jobs", params={"limit": 1})).json()
    assert page["total"] == 2 and [j["id"] for j in page["jobs"]] == [second["id"]]
    page = (await acme.get("/v1/jobs", params={"limit": 1, "offset": 1})).json()
    assert [j["id"] for j in page["jobs"]] == [job["id"]]
    await acme.post(f"/v1/jobs/{second['id']}/cancel")
    for status, expected in (("cancelled", [second]), ("active", [job]), ("done,failed", []),
                             ("queued, cancelled", [second, job])):
        page = (await acme.get("/v1/jobs", params={"status": status})).json()
        assert [j["id"] for j in page["jobs"]] == [j["id"] for j in expected] and page["total"] == len(expected)
    refused = await acme.get("/v1/jobs", params={"status": "finished"})
    assert refused.status_code == 422 and "'finished'" in refused.json()["error"]["message"]


async def test_a_job_without_a_mode_takes_the_deployments_heavy_mode(store):
    # the default was "report" whatever HEAVY_MODE said, while `heavy ask` followed it
    key = await store.tenants.create_key("acme")
    async with client_for(app_for(store, SETTINGS.model_copy(update={"mode": "answer"})), key.secret) as client:
        assert (await submit(client))["mode"] == "answer"
        assert (await submit(client, mode="report"))["mode"] == "report"
        assert (await client.post("/v1/jobs", json={**QUESTION, "mode": 1})).status_code == 422  # still strict


@pytest.mark.parametrize("body, where", [
    ({"question": ""}, "question"),
    ({"question": "   "}, "question"),
    ({**QUESTION, "trajectories": 9}, "trajectories"),
    ({**QUESTION, "mode": "essay"}, "mode"),
    ({**QUESTION, "tools": ["shell"]}, "tools"),
    ({**QUESTION, "surprise": 1}, "surprise"),
    ({**QUESTION, "max_steps": 0}, "max_steps"),
    ({"mode": "report"}, "question"),
    # JSON of the wrong type is refused, not coerced: `true` is no trajectory count, "yes" no review flag
    ({**QUESTION, "trajectories": True}, "trajectories"),
    ({**QUESTION, "max_steps": "3"}, "max_steps"),
    ({**QUESTION, "review": "yes"}, "review"),
    ({**QUESTION, "review": 1}, "review"),
])
async def test_validation_errors_are_422_json_naming_the_field(acme, body, where):
    error = assert_error(await acme.post("/v1/jobs", json=body), 422, "invalid_request")
    assert where in error["message"] and error["details"]


async def test_budgets_that_do_not_fit_the_context_window_are_refused(acme, store):
    error = assert_error(await acme.post("/v1/jobs", json={**QUESTION, "step_tokens": 4096}), 422, "invalid_request")
    assert "context window" in error["message"]
    # a thinking model's reasoning room comes out of the window too: refused here, not failed in the worker
    thinking = Settings(context_tokens=2048, reasoning_tokens=1024)
    key = await store.tenants.create_key("acme")
    async with client_for(app_for(store, thinking), key.secret) as client:
        error = assert_error(await client.post("/v1/jobs", json={**QUESTION, "step_tokens": 1024}), 422,
                             "invalid_request")
        assert "less the reasoning room (1024)" in error["message"]
        assert (await client.post("/v1/jobs", json={**QUESTION, "step_tokens": 512})).status_code == 202


async def test_malformed_json_bad_ids_and_unknown_routes(acme):
    response = await acme.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(response, 422, "invalid_request")
    latin1 = await acme.post("/v1/jobs", content='{"question": "caf\xe9"}'.encode("latin-1"),
                             headers={"content-type": "application/json"})
    assert "must be UTF-8" in assert_error(latin1, 400, "invalid_request")["message"]
    assert_error(await acme.get("/v1/jobs/not-a-job-id"), 422, "invalid_request")
    assert_error(await acme.get("/v1/jobs/" + "0" * 32), 404, "not_found")
    assert_error(await acme.delete("/v1/jobs"), 405, "method_not_allowed")
    # a path the API serves by other methods is its 405 naming them all, not the dashboard's missing file
    for method, path, allowed in [("GET", f"/v1/jobs/{'0' * 32}/cancel", "POST"), ("HEAD", "/healthz", "GET"),
                                  ("PUT", "/v1/jobs", "GET, POST"), ("POST", f"/v1/jobs/{'0' * 32}", "DELETE, GET")]:
        response = await acme.request(method, path)
        assert (response.status_code, response.headers["allow"]) == (405, allowed), (method, path)
    assert_error(await acme.get(f"/v1/jobs/{'0' * 32}/approve"), 405, "method_not_allowed")
    assert (await acme.get("/")).headers["content-type"].startswith("text/html")  # the dashboard, still at /


async def test_a_body_not_sent_as_json_is_415_saying_what_to_send(acme):
    response = await acme.post("/v1/jobs", content=b'{"question": "x"}',
                               headers={"content-type": "application/x-www-form-urlencoded"})  # curl -d
    error = assert_error(response, 415, "unsupported_media_type")
    assert "Content-Type: application/json" in error["message"]
    response = await acme.post("/v1/jobs", content=b'{"question": "x"}', headers={"content-type": "text/plain"})
    assert_error(response, 415, "unsupported_media_type")
    # no Content-Type at all (requests.post(url, data=json.dumps(...)) sends none): the same answer, not a 422
    # saying the body "should be a valid dictionary"
    response = await acme.post("/v1/jobs", content=b'{"question": "x"}')
    error = assert_error(response, 415, "unsupported_media_type")
    assert "Content-Type: application/json" in error["message"]
    response = await acme.post("/v1/jobs", content=b'{"question": "x"}',
                               headers={"content-type": "application/json; charset=utf-8"})
    assert response.status_code == 202, response.text
    assert (await acme.post("/v1/jobs", json={**QUESTION, "deadline_s": 60})).status_code == 202  # an int for a float


async def test_request_size_limit(acme):
    big = {**QUESTION, "question": "x" * 3000, "padding": "y" * 5000}
    assert_error(await acme.post("/v1/jobs", json=big), 413, "payload_too_large")

    async def chunks():  # no Content-Length: the limit applies while reading
        for _ in range(10):
            yield b" " * 1000
    response = await acme.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert_error(response, 413, "payload_too_large")


async def test_idempotent_resubmission(acme, store):
    headers = {"Idempotency-Key": "order-42"}
    first = await acme.post("/v1/jobs", json=QUESTION, headers=headers)
    again = await acme.post("/v1/jobs", json=QUESTION, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.headers["Idempotent-Replayed"] == "true"
    assert (await acme.get("/v1/jobs")).json()["total"] == 1 and await store.queue.depth() == 1
    changed = await acme.post("/v1/jobs", json={**QUESTION, "mode": "answer"}, headers=headers)
    assert_error(changed, 409, "idempotency_conflict")


async def test_a_tenant_sees_only_its_own_jobs(acme, globex):
    job = await submit(acme)
    path = f"/v1/jobs/{job['id']}"
    for response in (await globex.get(path), await globex.get(f"{path}/events"), await globex.get(f"{path}/report"),
                     await globex.post(f"{path}/cancel"), await globex.post(f"{path}/finish"),
                     await globex.post(f"{path}/approve")):
        assert_error(response, 404, "not_found")
    assert (await globex.get("/v1/jobs")).json()["total"] == 0
    assert (await acme.get(path)).status_code == 200


async def test_concurrent_job_quota_gives_429(acme, globex):
    for _ in range(3):
        await submit(acme)
    error = assert_error(await acme.post("/v1/jobs", json=QUESTION), 429, "quota_exceeded")
    assert "concurrent jobs" in error["message"]
    await submit(globex)  # per tenant


async def test_review_gate_plan_then_approve(acme, store):
    job = await submit(acme, review=True)
    assert job["status"] == "awaiting_approval"
    plan = job["plan"]
    assert plan["max_tokens"] == min(job["params"]["job_tokens"], 2 * job["params"]["trajectory_tokens"])
    assert "2 independent trajectories" in plan["steps"][0] and await store.queue.depth() == 0
    approved = await acme.post(f"/v1/jobs/{job['id']}/approve")
    assert approved.json()["status"] == "queued" and await store.queue.depth() == 1
    assert_error(await acme.post(f"/v1/jobs/{job['id']}/approve"), 409, "invalid_state")


async def test_jobs_held_for_review_take_no_slot_and_approval_at_the_limit_gives_429(acme):
    held = [await submit(acme, review=True) for _ in range(4)]  # more than the tenant's 3 concurrent jobs
    running = [await submit(acme) for _ in range(3)]
    error = assert_error(await acme.post(f"/v1/jobs/{held[0]['id']}/approve"), 429, "quota_exceeded")
    assert "concurrent jobs" in error["message"]
    assert (await acme.get(f"/v1/jobs/{held[0]['id']}")).json()["status"] == "awaiting_approval"
    assert (await acme.post(f"/v1/jobs/{running[0]['id']}/cancel")).status_code == 200
    assert (await acme.post(f"/v1/jobs/{held[0]['id']}/approve")).json()["status"] == "queued"


async def test_jobs_held_for_review_past_the_tenants_cap_are_a_429_saying_so(acme, store):
    store.jobs.max_held_jobs = 2
    held = [await submit(acme, review=True) for _ in range(2)]
    refused = await acme.post("/v1/jobs", json={**QUESTION, "review": True})
    error = assert_error(refused, 429, "quota_exceeded")
    assert "at its limit of 2 jobs held for review: approve or cancel one of them first" in error["message"]
    assert (await acme.post(f"/v1/jobs/{held[0]['id']}/cancel")).status_code == 200
    assert (await submit(acme, review=True))["status"] == "awaiting_approval"


async def test_cancel_a_queued_job_and_its_event_stream_ends(acme):
    job = await submit(acme)
    cancelled = await acme.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancelled.json()["status"] == "cancelled"
    events = parse_sse((await acme.get(f"/v1/jobs/{job['id']}/events")).text)
    assert [(e["id"], e["event"]) for e in events] == [(1, "job_cancelled")]
    assert_error(await acme.get(f"/v1/jobs/{job['id']}/report"), 409, "invalid_state")
    assert_error(await acme.post(f"/v1/jobs/{job['id']}/finish"), 409, "invalid_state")


async def test_delete_an_ended_job_only_and_only_ones_own(acme, globex):
    job = await submit(acme)
    assert "cancel it before deleting it" in assert_error(await acme.delete(f"/v1/jobs/{job['id']}"), 409,
                                                          "invalid_state")["message"]
    await acme.post(f"/v1/jobs/{job['id']}/cancel")
    assert_error(await globex.delete(f"/v1/jobs/{job['id']}"), 404, "not_found")
    deleted = await acme.delete(f"/v1/jobs/{job['id']}")
    assert deleted.status_code == 204 and deleted.content == b""
    assert_error(await acme.get(f"/v1/jobs/{job['id']}"), 404, "not_found")
    assert_error(await acme.get(f"/v1/jobs/{job['id']}/events"), 404, "not_found")
    assert (await acme.get("/v1/jobs")).json()["total"] == 0


async def test_a_followed_job_deleted_meanwhile_ends_its_stream(acme, store):
    job = await submit(acme)
    await acme.post(f"/v1/jobs/{job['id']}/cancel")
    key = await store.tenants.create_key("acme")
    stream = follow(EventHub(store), job["id"], 0, key.secret)  # a follower that has not read the job's one event yet
    await acme.delete(f"/v1/jobs/{job['id']}")
    assert [event async for event in stream] == []


async def test_revoking_a_key_ends_the_event_streams_it_holds_open(app, acme, store, monkeypatch):
    """A revoked key stops working at once, for a stream it opened too (a dashboard left open on a running job):
    the stream ends, and the client's reconnection is refused."""
    monkeypatch.setattr(event_hub, "BLOCK_MS", 50)
    job = await submit(acme)  # queued, and no worker: its stream stays open until it ends
    key = await store.tenants.create_key("acme", "dashboard")
    followers = REGISTRY.get_sample_value("heavy_sse_followers")
    async with client_for(app, key.secret) as client:
        stream = asyncio.create_task(client.get(f"/v1/jobs/{job['id']}/events"))
        await wait_for(lambda: asyncio.sleep(0, result=REGISTRY.get_sample_value("heavy_sse_followers") > followers))
        await store.tenants.revoke(key.key_id)
        response = await asyncio.wait_for(stream, 10)
        assert response.status_code == 200 and parse_sse(response.text) == []
        assert_error(await client.get(f"/v1/jobs/{job['id']}/events"), 401, "unauthorized")


async def test_a_stream_ends_with_the_terminal_event_or_at_once_for_a_job_that_ended_without_one(acme, store):
    """The terminal event is written with the job's end (JobStore.finish): a follower that finds the job ended gets
    it next and stops there; a job that ended without one (by an older worker that died before writing it) ends
    its stream at once instead of leaving it open."""
    key = await store.tenants.create_key("acme")
    job = await submit(acme)
    await store.jobs.update(job["id"], status=RUNNING)
    await store.jobs.append_event(job["id"], {"type": "job_started", "job_id": job["id"]})
    await store.jobs.finish(await store.jobs.get(job["id"]), DONE, event={"type": "report_ready", "job_id": job["id"]})
    assert [event.event async for event in follow(EventHub(store), job["id"], 1, key.secret)] == ["report_ready"]

    orphan = await submit(acme)
    await store.jobs.update(orphan["id"], status=RUNNING)
    await store.jobs.append_event(orphan["id"], {"type": "job_started", "job_id": orphan["id"]})
    await store.jobs.finish(await store.jobs.get(orphan["id"]), DONE)
    assert [event async for event in follow(EventHub(store), orphan["id"], 1, key.secret)] == []


async def test_cancel_and_finish_of_a_running_job_are_requests_to_its_worker(acme, store):
    job = await submit(acme)
    await store.jobs.update(job["id"], status=RUNNING)
    assert (await acme.post(f"/v1/jobs/{job['id']}/finish")).json()["control"] == "finish"
    assert (await acme.post(f"/v1/jobs/{job['id']}/cancel")).json()["control"] == "cancel"


async def test_report_by_accept_header(acme, store):
    job = await submit(acme)
    assert_error(await acme.get(f"/v1/jobs/{job['id']}/report"), 409, "invalid_state")
    await store.jobs.finish(await store.jobs.get(job["id"]), DONE,
                            report=("# Answer\n\nargparse [1]", {"answer": "argparse", "sources": []}))
    as_json = await acme.get(f"/v1/jobs/{job['id']}/report")
    assert as_json.json() == {"answer": "argparse", "sources": []}
    as_md = await acme.get(f"/v1/jobs/{job['id']}/report", headers={"Accept": "text/markdown"})
    assert as_md.headers["content-type"].startswith("text/markdown") and as_md.text.startswith("# Answer")
    as_html = await acme.get(f"/v1/jobs/{job['id']}/report", headers={"Accept": "text/html"})
    assert as_html.headers["content-type"].startswith("text/html")
    assert as_html.text.startswith('<h1 dir="auto">Answer</h1>') and 'href="#src-1"' in as_html.text
    assert_error(await acme.get(f"/v1/jobs/{job['id']}/report", headers={"Accept": "image/png"}), 406,
                 "not_acceptable")
    # preferences by q-value (RFC 9110), not by order; q=0 is "not this"
    for accept, media in (("text/html;q=0.5, application/json", "application/json"),
                          ("text/markdown;q=0, */*;q=0.1", "application/json"),
                          ("application/json;q=0.2, text/markdown;q=0.9", "text/markdown")):
        response = await acme.get(f"/v1/jobs/{job['id']}/report", headers={"Accept": accept})
        assert response.headers["content-type"].startswith(media), accept
    assert_error(await acme.get(f"/v1/jobs/{job['id']}/report", headers={"Accept": "application/json;q=0"}), 406,
                 "not_acceptable")


async def test_an_event_id_past_what_a_stream_id_holds_is_a_422(acme):
    """Event ids are Redis stream ids (64-bit): a larger Last-Event-ID or `after` must be refused up front, not
    break the event stream after its 200 has gone out."""
    job = await submit(acme)
    url = f"/v1/jobs/{job['id']}/events"
    assert_error(await acme.get(url, headers={"Last-Event-ID": str(2**64)}), 422, "invalid_request")
    assert_error(await acme.get(url, params={"after": 2**64}), 422, "invalid_request")


async def test_events_replay_from_the_start_or_after_last_event_id(acme, store):
    job = await submit(acme)
    for kind in ("job_started", "trajectory_step", "aggregating", "report_ready"):
        await store.jobs.append_event(job["id"], {"type": kind, "job_id": job["id"]})
    await store.jobs.finish(await store.jobs.get(job["id"]), PARTIAL)
    url = f"/v1/jobs/{job['id']}/events"
    everything = parse_sse((await acme.get(url)).text)
    assert [e["id"] for e in everything] == [1, 2, 3, 4] and everything[-1]["event"] == "report_ready"
    assert everything[1]["data"] == {"type": "trajectory_step", "job_id": job["id"], "seq": 2}
    resumed = parse_sse((await acme.get(url, headers={"Last-Event-ID": "2"})).text)
    assert [e["id"] for e in resumed] == [3, 4]
    assert [e["id"] for e in parse_sse((await acme.get(url, params={"after": 3})).text)] == [4]
