"""`heavy jobs ...` against a real service: the API in its own process on loopback, a worker with the scripted
model, a real redis-server. Submit and watch to the report, list, show, the report as JSON, delete; the API's
refusals as one line; a watch that resumes after the API restarts, missing no event, or after waiting as a 429 told
it."""

import asyncio
import json

import httpx
import pytest
from typer.testing import CliRunner

from heavy.cli import app
from tests.heavy.worker_helpers import ended, wait_for

pytestmark = pytest.mark.anyio
QUESTION = "Which module parses command-line options?"


async def heavy(service, key: str | None, *args: str):
    """`heavy jobs ARGS` against the service (in a thread: the worker runs on this test's event loop)."""
    env = {"HEAVY_API_URL": service.url, "HEAVY_API_KEY": key or ""}
    return await asyncio.to_thread(CliRunner().invoke, app, ["jobs", *args], env=env)


async def test_submit_and_watch_to_the_report_then_list_show_and_delete(service, store):
    key = (await store.tenants.create_key("acme")).secret
    ran = await heavy(service, key, "submit", QUESTION, "--trajectories", "2", "--tool", "search", "--tool",
                      "open_page", "--priority", "-1", "--watch")
    assert ran.exit_code == 0, ran.output
    job_id = ran.output.splitlines()[0]
    assert "report ready" in ran.output and "argparse" in ran.output.split("report ready", 1)[1]  # board, then report
    job = await store.jobs.get(job_id, "acme")
    assert (job.status, job.params["trajectories"], job.params["tools"]) == ("done", 2, ["open_page", "search"])
    assert job.params["priority"] == -1

    listed = (await heavy(service, key, "list")).output.splitlines()  # not a terminal: one tab-separated line a job
    assert [line.split("\t")[:3] for line in listed] == [[job_id, "done", "report"]]
    assert (await heavy(service, key, "list", "--status", "active,failed")).output == ""
    unknown = await heavy(service, key, "list", "--status", "finished")
    assert unknown.exit_code == 1 and "422" in unknown.output and "'finished'" in unknown.output
    shown = json.loads((await heavy(service, key, "show", job_id)).output)
    assert shown["status"] == "done" and shown["events"] == job.events
    result = json.loads((await heavy(service, key, "report", job_id, "--json")).output)
    assert "argparse" in result["answer"]

    assert (await heavy(service, key, "delete", job_id)).output.strip() == f"{job_id}: deleted"
    gone = await heavy(service, key, "show", job_id)
    assert gone.exit_code == 1 and "404 not_found" in gone.output and "Traceback" not in gone.output


async def test_list_names_the_cursor_of_older_jobs_which_holds_its_place(service, store):
    key = (await store.tenants.create_key("acme")).secret
    held = [(await store.jobs.submit("acme", question=f"q{i}", mode="report", params={}, review=True))[0].id
            for i in range(3)]
    first = await heavy(service, key, "list", "--limit", "2", "--status", "awaiting_approval")
    assert [line.split("\t")[0] for line in first.stdout.splitlines()] == held[:0:-1]
    command = first.stderr.strip().removeprefix("older jobs: ")
    assert command.startswith("heavy jobs list --limit 2 --status awaiting_approval --cursor "), first.stderr
    await store.jobs.submit("acme", question="newer", mode="report", params={}, review=True)  # moves no page
    older = await heavy(service, key, *command.split()[2:])
    assert [line.split("\t")[0] for line in older.stdout.splitlines()] == held[:1] and older.stderr == ""


def test_list_reads_a_page_of_an_api_older_than_its_links():
    """Clients go before the service in an upgrade (deploy/README): session 45's API gives a page without `links`,
    and fec072a's links the next page by offset, with no cursor; the cursor hint read both (KeyError 'links' or
    'cursor', exit 1 after the table)."""
    from tests.heavy.loopback_server import LoopbackServer

    job = {"id": "j1", "status": "done", "mode": "report", "tokens": 5, "created_at": 0.0, "question": "q"}
    page = {"jobs": [job], "total": 3, "offset": 0, "limit": 1}  # b74daab's JobList: older jobs follow, unnamed
    by_offset = {"links": {"self": "/v1/jobs?offset=0&limit=1", "next": "/v1/jobs?offset=1&limit=1"}}  # fec072a's
    for older_api in (page, {**page, **by_offset}):
        with LoopbackServer({"/v1/jobs?limit=1": (200, {"Content-Type": "application/json"},
                                                  json.dumps(older_api).encode())}) as api:
            listed = CliRunner().invoke(app, ["jobs", "--url", api.base_url, "list", "--limit", "1"])
        assert listed.exit_code == 0 and listed.stdout.split("	")[0] == "j1", (older_api, listed.output)
        assert "--cursor" not in listed.stderr


def test_list_at_a_cursor_stops_at_an_api_older_than_cursors():
    """Session 45's API (and fec072a's) ignores `cursor` and answers the newest page: shown, it would pass for the
    older jobs the cursor names. Its page's self link carries no cursor (a newer API's always does): one line, exit 1,
    no page."""
    from tests.heavy.loopback_server import LoopbackServer

    job = {"id": "newest", "status": "done", "mode": "report", "tokens": 5, "created_at": 0.0, "question": "q"}
    page = {"jobs": [job], "total": 3, "offset": 0, "limit": 1}  # b74daab's JobList
    by_offset = {"links": {"self": "/v1/jobs?offset=0&limit=1", "next": "/v1/jobs?offset=1&limit=1"}}  # fec072a's
    for older_api in (page, {**page, **by_offset}):
        with LoopbackServer({"/v1/jobs?limit=1&cursor=c2": (200, {"Content-Type": "application/json"},
                                                            json.dumps(older_api).encode())}) as api:
            listed = CliRunner().invoke(app, ["jobs", "--url", api.base_url, "list", "--limit", "1", "--cursor", "c2"])
        assert listed.exit_code == 1 and listed.stdout == "", (older_api, listed.output)
        assert listed.stderr.startswith("error: this heavy API is older than --cursor"), listed.stderr
        assert listed.stderr.count("\n") == 1


def test_a_url_that_is_not_the_heavy_api_is_one_line():
    """--url at another web server (a proxy's sign-in page, a static site): its HTML 200 raised JSONDecodeError (a
    traceback), its HTML 404 was printed markup and all, its redirect passed for the answer; and a job id is one path
    segment, not `../` elsewhere."""
    from tests.heavy.loopback_server import LoopbackServer

    sign_in = b"<!DOCTYPE html>\n<html>\n<head><title>Sign in\n - Portal</title></head>\n<body>who?</body>\n</html>\n"
    not_found = b"<html>\n<head>\n<title>Error response</title>\n</head>\n<body><p>Error code: 404</p></body></html>"
    health = (200, {"Content-Type": "application/json"}, b'{"status": "ok"}')
    moved = (301, {"Location": "https://heavy.example/v1/jobs/abc/report", "Content-Type": "text/html"}, not_found)
    routes = {"/v1/jobs?limit=20": (200, {"Content-Type": "text/html"}, sign_in),
              "/v1/jobs/abc": (404, {"Content-Type": "text/html"}, not_found), "/healthz": health,
              "/v1/jobs/abc/report": moved}
    with LoopbackServer(routes) as web:
        listed = CliRunner().invoke(app, ["jobs", "--url", web.base_url, "list"])
        shown = CliRunner().invoke(app, ["jobs", "--url", web.base_url, "show", "abc"])
        elsewhere = CliRunner().invoke(app, ["jobs", "--url", web.base_url, "show", "../../healthz"])
        # a proxy sending http:// on to https://: the redirect's page was printed as the report, exit 0
        redirected = CliRunner().invoke(app, ["jobs", "--url", web.base_url, "report", "abc"])
    assert listed.exit_code == 1 and listed.stderr == (
        f"error: {web.base_url}/v1/jobs answered 200 with a web page 'Sign in - Portal', not the heavy API's JSON: is "
        "--url the service?\n")
    assert shown.exit_code == 1 and shown.stderr == "error: 404: a web page 'Error response'\n"
    assert elsewhere.exit_code == 1 and "/healthz" not in [path for path, _ in web.requests]
    assert redirected.exit_code == 1 and redirected.stdout == "" and redirected.stderr == (
        f"error: {web.base_url}/v1/jobs/abc/report answered 301, moved to https://heavy.example/v1/jobs/abc/report: "
        "give --url as where the service is now\n")


async def test_what_the_api_refuses_is_one_line(service, store):
    key = (await store.tenants.create_key("acme")).secret
    # a key read from a file keeps its newline: h11 refused the header ("cannot reach the heavy API", the key shown)
    assert (await heavy(service, f"{key}\n", "list")).exit_code == 0
    control = await heavy(service, f"{key[:8]}\x07{key[8:]}", "list")
    assert control.exit_code == 1 and control.stderr == (
        "error: not a usable --key / HEAVY_API_KEY: it holds a control character\n")
    wrong_key = await heavy(service, "hv_wrong", "list")
    assert wrong_key.exit_code == 1 and "401" in wrong_key.output
    job_id = (await heavy(service, key, "submit", QUESTION, "--trajectories", "1")).output.strip()
    await wait_for(lambda: ended(store, job_id))
    refused = await heavy(service, key, "cancel", job_id)
    assert refused.exit_code == 1 and "409 invalid_state: job" in refused.output and "already done" in refused.output
    unreachable = await asyncio.to_thread(CliRunner().invoke, app, ["jobs", "--url", "http://127.0.0.1:9", "list"])
    assert unreachable.exit_code == 1 and "cannot reach the heavy API at http://127.0.0.1:9" in unreachable.output


async def test_a_watch_resumes_after_the_api_restarts_and_misses_no_event(service, store):
    key = (await store.tenants.create_key("acme")).secret
    service.model_gate.clear()  # the job waits until the stream has dropped
    job, _ = await store.jobs.submit("acme", question=QUESTION, mode="report",
                                     params={"trajectories": 2, "max_steps": 4, "step_tokens": 64,
                                             "trajectory_tokens": 10_000, "job_tokens": 50_000, "deadline_s": 120,
                                             "tools": ["search"]})
    watching = asyncio.create_task(heavy(service, key, "watch", job.id))
    await wait_for(lambda: _events_at_least(store, job.id, 2))
    await asyncio.sleep(0.5)  # the watch has read them
    service.kill_api()
    service.model_gate.set()  # the job goes on while the API is down; its events wait in Redis
    await asyncio.sleep(1.0)
    await service.start_api()
    watched = await asyncio.wait_for(watching, 60)
    assert watched.exit_code == 0, watched.output
    assert "report ready" in watched.output and "argparse" in watched.output
    assert watched.output.count("answered") + watched.output.count("max_steps") >= 2  # both lanes ended


async def _events_at_least(store, job_id: str, count: int) -> bool:
    return (await store.jobs.get(job_id)).events >= count


async def test_a_watch_of_a_job_that_ends_without_a_report_exits_1(service, store):
    """`heavy jobs submit --watch Q > report.md && publish report.md` must not publish an empty report."""
    key = (await store.tenants.create_key("acme")).secret
    service.model_gate.clear()  # the job is running, not done, when it is cancelled
    job, _ = await store.jobs.submit("acme", question=QUESTION, mode="report",
                                     params={"trajectories": 1, "max_steps": 4, "step_tokens": 64,
                                             "trajectory_tokens": 10_000, "job_tokens": 50_000, "deadline_s": 120,
                                             "tools": ["search"]})
    await wait_for(lambda: _events_at_least(store, job.id, 2))
    assert (await heavy(service, key, "cancel", job.id)).exit_code == 0
    service.model_gate.set()
    await wait_for(lambda: ended(store, job.id))
    watched = await heavy(service, key, "watch", job.id)
    assert watched.exit_code == 1, watched.output
    assert f"error: job {job.id} was cancelled: no report" in watched.output and "Traceback" not in watched.output


async def test_a_watch_passes_over_what_a_newer_service_added_to_its_events(service, store):
    """A CLI older than the service it follows (clients upgrade last, if ever). b74daab's CLI refused whole every
    trajectory_done and report_ready of session 45's service, which had gained a field each: its watch of a done
    job drew no lane's end and exited 1, 'aggregating (all_done): no report'. A field it does not know is passed
    over; a report_ready of a newer schema version, which it cannot read at all, still ends the watch with the
    report."""
    key = (await store.tenants.create_key("acme")).secret
    job, _ = await store.jobs.submit("acme", question=QUESTION, mode="report",
                                     params={"trajectories": 1, "max_steps": 4, "step_tokens": 64,
                                             "trajectory_tokens": 10_000, "job_tokens": 50_000, "deadline_s": 120,
                                             "tools": ["search"]})
    await wait_for(lambda: ended(store, job.id))
    stream = store.jobs.keys.events(job.id)
    for change in ({"added_later": "x"}, {"schema_version": 99}):  # as a newer service would have written them
        entries = await store.redis.xrange(stream)
        await store.redis.delete(stream)
        for entry_id, fields in entries:
            event = json.loads(fields["event"])
            if "added_later" in change or event["type"] == "report_ready":
                event = {**event, **change}
            await store.redis.xadd(stream, {**fields, "event": json.dumps(event)}, id=entry_id)
        watched = await heavy(service, key, "watch", job.id)
        assert watched.exit_code == 0, (change, watched.output)
        assert "report ready" in watched.output and "argparse" in watched.output.split("report ready", 1)[1]
        assert "answer: argparse" in watched.output  # the lane's trajectory_done was drawn


async def test_a_job_submitted_for_review_waits_until_approved_from_the_cli(service, store):
    key = (await store.tenants.create_key("acme")).secret
    held = await heavy(service, key, "submit", QUESTION, "--trajectories", "1", "--max-steps", "2", "--step-tokens",
                       "64", "--review")
    assert held.exit_code == 0, held.output
    job_id = held.output.strip()
    shown = json.loads((await heavy(service, key, "show", job_id)).output)
    assert shown["status"] == "awaiting_approval" and shown["plan"] and shown["approve_by"]
    assert (shown["params"]["max_steps"], shown["params"]["step_tokens"]) == (2, 64)
    approved = await heavy(service, key, "approve", job_id)
    assert approved.exit_code == 0 and approved.output.strip() in (f"{job_id}: queued", f"{job_id}: running")
    await wait_for(lambda: ended(store, job_id))
    again = await heavy(service, key, "approve", job_id)
    assert again.exit_code == 1 and "409" in again.output and "not awaiting approval" in again.output


async def test_a_watch_whose_key_is_revoked_says_so(service, store):
    # the API ends the stream of a key revoked meanwhile: the watch said the job had ended ("researching: no report")
    made = await store.tenants.create_key("acme")
    held, _ = await store.jobs.submit("acme", question=QUESTION, mode="report", review=True,  # no worker runs it
                                      params={"trajectories": 1, "max_steps": 2, "step_tokens": 64,
                                              "trajectory_tokens": 10_000, "job_tokens": 50_000, "deadline_s": 120,
                                              "tools": ["search"]})
    watching = asyncio.create_task(heavy(service, made.secret, "watch", held.id))
    await wait_for(lambda: _following(service))  # the watch follows the stream (else 401 before any change)
    await store.tenants.revoke(made.key_id)
    watched = await asyncio.wait_for(watching, 30)
    assert watched.exit_code == 1, watched.output
    assert "401" in watched.output and "no report" not in watched.output and "Traceback" not in watched.output


async def _following(service) -> bool:
    async with httpx.AsyncClient(base_url=service.url) as client:
        return "heavy_sse_followers 1.0" in (await client.get("/metrics")).text


async def test_a_watch_into_a_file_writes_the_report_alone(service, store):
    """`heavy jobs submit --watch Q > report.md` (as `heavy ask Q > report.md`): the file holds the Markdown as the
    API serves it; the job's id and the board go to stderr. Both were written into the file before the report."""
    key = (await store.tenants.create_key("acme")).secret
    ran = await heavy(service, key, "submit", QUESTION, "--trajectories", "2", "--tool", "search", "--watch")
    assert ran.exit_code == 0, ran.output
    job_id = ran.stderr.splitlines()[0]
    async with httpx.AsyncClient(base_url=service.url, headers={"Authorization": f"Bearer {key}"}) as client:
        markdown = (await client.get(f"/v1/jobs/{job_id}/report", headers={"Accept": "text/markdown"})).text
    assert ran.stdout == markdown + "\n"
    assert "report ready" in ran.stderr
    assert (await heavy(service, key, "watch", job_id)).stdout == markdown + "\n"


async def test_a_watch_refused_at_the_stream_cap_waits_as_told_then_follows_the_job(service, store):
    await service.start_api_again(env={"HEAVY_TENANT_MAX_STREAMS": "1"})
    key = (await store.tenants.create_key("acme")).secret
    service.model_gate.clear()  # the job runs while another client holds the tenant's one stream
    job, _ = await store.jobs.submit("acme", question=QUESTION, mode="report",
                                     params={"trajectories": 1, "max_steps": 4, "step_tokens": 64,
                                             "trajectory_tokens": 10_000, "job_tokens": 50_000, "deadline_s": 120,
                                             "tools": ["search"]})
    try:
        async with httpx.AsyncClient(base_url=service.url, headers={"Authorization": f"Bearer {key}"},
                                     timeout=30) as client:
            held = await client.send(client.build_request("GET", f"/v1/jobs/{job.id}/events"), stream=True)
            assert held.status_code == 200
            watching = asyncio.create_task(heavy(service, key, "watch", job.id))
            await wait_for(lambda: _streams_refused(client), timeout_s=30)
            await held.aclose()  # the place frees; the watch, told to wait, gets it when it asks again
    finally:
        service.model_gate.set()
    watched = await asyncio.wait_for(watching, 120)
    assert watched.exit_code == 0, watched.output
    told = " ".join(watched.output.split())  # as the terminal wrapped it
    assert "limit of 1 open event streams" in told and "(retry after" in told and "trying again in" in told
    assert "report ready" in watched.output


async def _streams_refused(client: httpx.AsyncClient) -> bool:
    """The API has refused an event stream with 429 (its request counter)."""
    return any(line.startswith("heavy_api_requests_total{") and 'route="/v1/jobs/{job_id}/events"' in line
               and 'status="429"' in line for line in (await client.get("/metrics")).text.splitlines())
