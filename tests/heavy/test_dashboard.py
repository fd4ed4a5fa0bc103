"""The dashboard in real Chromium (Debian's, driven by Playwright; never a downloaded browser): sign in, submit a
job, watch the lanes progress, see the report with clickable citations; a screenshot is saved under artifacts/."""

import asyncio
import os
import re
from pathlib import Path

import httpx
import pytest

from tests.heavy.worker_helpers import JOB, ended, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.browser, pytest.mark.slow]

ARTIFACTS = Path(os.environ.get("HEAVY_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "artifacts"))


async def signed_in(page, service, store) -> None:
    """The dashboard open and signed in with a new key of tenant acme, its new-job form shown."""
    key = await store.tenants.create_key("acme")
    await page.goto(service.url + "/")
    await page.fill("#api-key", key.secret)
    await page.click("#sign-in-form button")
    await page.wait_for_selector("#submit-form", state="visible")


async def test_sign_in_submit_watch_lanes_and_read_the_cited_report(service, page, store):
    key = await store.tenants.create_key("acme")
    await page.goto(service.url + "/")
    await page.fill("#api-key", "hv_wrong")
    await page.click("#sign-in-form button")
    await page.wait_for_selector("#sign-in-error:has-text('unknown')")

    await page.fill("#api-key", key.secret)
    await page.click("#sign-in-form button")
    await page.wait_for_selector("#submit-form", state="visible")
    await page.fill("#question", "Which module parses command-line options?")
    await page.fill("#trajectories", "3")
    await page.fill("#max-steps", "4")
    await page.fill("#step-tokens", "128")
    await page.select_option("#mode", "report")
    await page.click("#submit-form button")

    await page.wait_for_selector("#lane-2")  # one lane per trajectory
    await page.wait_for_selector("#tenant-status:has-text('1 job(s)')")  # it said 0 until the list was shown again
    assert await page.locator(".lane").count() == 3
    # selectors, not wait_for_function: the dashboard's content security policy refuses the string it evaluates
    await page.wait_for_selector("#lane-0 .step:text-matches('^[2-9]')", timeout=30_000)
    # what the lane does now: a search, or (on a loaded machine, the page may be further on) its answer
    assert (await page.text_content("#lane-0 .action")).startswith(("search", "answer"))

    await page.wait_for_selector("#report:not([hidden])", timeout=60_000)
    assert await page.locator(".lane.done").count() == 3
    assert await page.text_content("#job-status") == "done"
    assert "argparse" in await page.text_content("#report")
    citation = page.locator("#report a.cite").first
    number = await citation.get_attribute("data-cite")
    await citation.click()
    source = page.locator(f"#src-{number}")
    assert "highlight" in await source.get_attribute("class") and await page.is_visible("#job-view")
    assert await source.locator("a").get_attribute("href") in ("http://corpus/argparse", "http://corpus/getopt")
    # the claim citing a page no trajectory fetched was taken out, and the page says so
    assert await page.is_visible("#dropped") and "Click ships with Python" not in await page.text_content("#report")
    await page.click("#dropped summary")
    dropped = await page.locator("#dropped li").all_text_contents()
    assert f"{len(dropped)} claims taken out" in await page.text_content("#dropped summary"), dropped
    assert "Click ships with Python [9]." in dropped, dropped
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "dashboard_job.png"), full_page=True)

    # back on the list (a hash change: the rows drawn before the job ended stay until the list is fetched again)
    await page.goto(service.url + "/#/")
    await page.wait_for_selector("#jobs tbody tr td.status-done")
    assert await page.locator("#jobs tbody tr").count() == 1
    await page.select_option("#status-filter", "failed")  # the list shows one status at a time if asked
    await page.wait_for_selector("#tenant-status:has-text('0 job(s) failed')")
    assert await page.locator("#jobs tbody tr").count() == 0
    await page.select_option("#status-filter", "")
    await page.wait_for_selector("#jobs tbody tr td.status-done")

    # an ended job can be deleted from its page (after a confirmation); the list is empty then
    await page.click("#jobs tbody tr")
    await page.wait_for_selector("#delete:not([disabled])")  # this job's status known, its heading drawn above
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.click("#delete")
    await page.wait_for_selector("#tenant-status:has-text('0 job(s)')")
    assert await page.locator("#jobs tbody tr").count() == 0 and await store.jobs.list("acme") == ([], 0)


async def test_the_job_page_reconnects_after_the_api_restarts_without_losing_events(service, page, store):
    key = await store.tenants.create_key("acme")
    # The model's calls wait until the stream has dropped: on a loaded machine the job could otherwise finish before
    # the page follows it, and a finished stream has nothing to reconnect to.
    service.model_gate.clear()
    job, _ = await store.jobs.submit("acme", question="Which module parses command-line options?", mode="report",
                                     params={"trajectories": 2, "max_steps": 4, "step_tokens": 64,
                                             "trajectory_tokens": 10_000, "job_tokens": 50_000, "deadline_s": 120,
                                             "tools": ["search"]})
    await page.goto(service.url + "/")
    await page.fill("#api-key", key.secret)
    await page.click("#sign-in-form button")
    # signed in (a sign-in still under way routes again when it ends, and opens the job anew: after the kill, that
    # opening would fail and leave the page without a follower)
    await page.wait_for_selector("#submit-form", state="visible")
    await page.goto(f"{service.url}/#/jobs/{job.id}")
    await page.wait_for_selector("#job-view:not([data-last-event='0'], [data-last-event='1'], [data-last-event='2'])")
    service.kill_api()  # the open event stream drops
    await page.wait_for_selector("#connection:has-text('reconnecting')")
    service.model_gate.set()  # the job goes on while the API is down; its events wait in Redis
    await service.start_api()
    await wait_for(lambda: ended(store, job.id), timeout_s=60)  # the worker's side first: which side stalled
    await page.wait_for_selector("#report:not([hidden])", timeout=30_000)
    final = await store.jobs.get(job.id)  # now: its terminal event is written (the page has it)
    view = page.locator("#job-view")
    assert await view.get_attribute("data-last-event") == str(final.events)
    assert await view.get_attribute("data-applied") == str(final.events)  # each event once, none missing
    assert await page.locator(".lane.done").count() == 2


async def split_line_ends(port: int):
    """A loopback proxy to the service on `port` that hands each CRLF the API sends to the browser in two reads, "\r"
    and then "\n", as any network may cut a stream; its URL."""
    async def pump(reader, writer, split: bool) -> None:
        try:
            while data := await reader.read(65536):
                for piece in data.replace(b"\r\n", b"\r\0\n").split(b"\0") if split else [data]:
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.005)  # its own read
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def connect(client_reader, client_writer) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.gather(pump(client_reader, server_writer, False), pump(server_reader, client_writer, True))

    server = await asyncio.start_server(connect, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_events_whose_line_ends_arrive_in_two_reads_are_each_applied_once(service, page, store):
    """The API ends SSE lines with CRLF; a read ending between the "\r" and the "\n" of the blank line after an event
    must not merge that event with the next (their ids read as one, "5" and "6" as 56, and the page resumed there)."""
    key = await store.tenants.create_key("acme")
    job, _ = await store.jobs.submit("acme", question="Which module parses command-line options?", mode="report",
                                     params={"trajectories": 2, "max_steps": 4, "step_tokens": 64,
                                             "trajectory_tokens": 10_000, "job_tokens": 50_000, "deadline_s": 120,
                                             "tools": ["search"]})
    proxy, url = await split_line_ends(service.port)
    async with proxy:
        await page.goto(url + "/")
        await page.fill("#api-key", key.secret)
        await page.click("#sign-in-form button")
        await page.wait_for_selector("#submit-form", state="visible")
        await page.goto(f"{url}/#/jobs/{job.id}")
        await page.wait_for_selector("#report:not([hidden])", timeout=60_000)
        final = await store.jobs.get(job.id)
        view = page.locator("#job-view")
        assert await view.get_attribute("data-last-event") == str(final.events)
        assert await view.get_attribute("data-applied") == str(final.events)
        assert await page.locator(".lane.done").count() == 2


async def test_a_report_still_loading_when_another_job_is_opened_stays_off_that_jobs_page(service, page, store):
    """Job A's report is fetched after its report_ready; opening job B before it arrives must not show A's report
    (and A's status and figures) on B's page."""
    key = await store.tenants.create_key("acme")
    params = {"trajectories": 2, "max_steps": 4, "step_tokens": 64, "trajectory_tokens": 10_000,
              "job_tokens": 50_000, "deadline_s": 120, "tools": ["search"]}
    done, _ = await store.jobs.submit("acme", question="Which module parses command-line options?", mode="report",
                                      params=params)
    held, _ = await store.jobs.submit("acme", question="Which module reads configuration files?", mode="report",
                                      params=params, review=True)
    await wait_for(lambda: ended(store, done.id), timeout_s=60)
    release = asyncio.Event()

    async def slow_report(route) -> None:
        await release.wait()
        await route.continue_()

    await page.route(f"**/v1/jobs/{done.id}/report", slow_report)
    await page.goto(service.url + "/")
    await page.fill("#api-key", key.secret)
    await page.click("#sign-in-form button")
    await page.wait_for_selector("#submit-form", state="visible")
    async with page.expect_request(f"**/v1/jobs/{done.id}/report"):  # its report_ready arrived; the report waits
        await page.goto(f"{service.url}/#/jobs/{done.id}")
    await page.goto(f"{service.url}/#/jobs/{held.id}")
    await page.wait_for_selector("#job-status:has-text('awaiting_approval')")
    async with page.expect_response(f"**/v1/jobs/{done.id}/report"):
        release.set()
    await page.wait_for_timeout(1000)  # what a late report would do, it has done by now
    assert await page.text_content("#job-question") == "Which module reads configuration files?"
    assert await page.text_content("#job-status") == "awaiting_approval"
    assert await page.is_hidden("#report") and await page.is_hidden("#aggregation")


ONE_SHORT_TRAJECTORY = {"trajectories": 1, "max_steps": 2, "step_tokens": 64, "trajectory_tokens": 10_000,
                        "job_tokens": 50_000, "deadline_s": 120, "tools": ["search"]}


async def test_a_job_page_offers_no_action_until_it_knows_the_jobs_status(service, page, store):
    """Opened after an ended job's page, a job's page left that job's Delete enabled until its own status came: a
    click then deleted unseen, or (as the question filled in the heading above) missed the button."""
    await signed_in(page, service, store)
    done, _ = await store.jobs.submit("acme", question="Which module parses command-line options?", mode="report",
                                      params=ONE_SHORT_TRAJECTORY)
    held, _ = await store.jobs.submit("acme", question="Which module reads configuration files?", mode="report",
                                      params=ONE_SHORT_TRAJECTORY, review=True)
    await wait_for(lambda: ended(store, done.id), timeout_s=60)
    await page.goto(f"{service.url}/#/jobs/{done.id}")
    await page.wait_for_selector("#delete:not([disabled])")
    release = asyncio.Event()

    async def slow_job(route) -> None:
        await release.wait()
        await route.continue_()

    await page.route(f"**/v1/jobs/{held.id}", slow_job)
    async with page.expect_request(f"**/v1/jobs/{held.id}"):  # its page shown, its status not known yet
        await page.goto(f"{service.url}/#/jobs/{held.id}")
    assert await page.is_disabled("#delete") and await page.is_disabled("#cancel") and await page.is_disabled("#finish")
    assert await page.text_content("#job-status") == "" and await page.is_hidden("#approve")
    release.set()
    await page.wait_for_selector("#approve", state="visible")
    assert await page.is_disabled("#delete") and await page.is_enabled("#cancel")


async def test_an_ended_jobs_replayed_events_do_not_move_its_status_back(service, page, store):
    """Opened, an ended job's page replays its events from the first: job_started and aggregating set it 'running'
    and 'aggregating' again, Delete disabled, until the replayed report_ready fetched the job once more."""
    await signed_in(page, service, store)
    done, _ = await store.jobs.submit("acme", question="Which module parses command-line options?", mode="report",
                                      params=ONE_SHORT_TRAJECTORY)
    await wait_for(lambda: ended(store, done.id), timeout_s=60)
    asked = 0

    async def only_the_first_answered(route) -> None:  # the page's own read of the job; the report's read waits
        nonlocal asked
        asked += 1
        if asked == 1:
            await route.continue_()

    await page.route(f"**/v1/jobs/{done.id}", only_the_first_answered)
    await page.goto(f"{service.url}/#/jobs/{done.id}")
    await page.wait_for_selector("#job-stage:has-text('report ready')")  # every event replayed
    assert await page.text_content("#job-status") == "done" and await page.is_enabled("#delete")


async def test_a_question_without_spaces_stays_inside_the_page(service, page, store):
    """A question may hold a long URL or identifier with no space in it: the job list and the job's heading wrap it
    instead of running past the page's width."""
    key = await store.tenants.create_key("acme")
    question = "What does https://example.org/" + "a" * 300 + " say?"
    job, _ = await store.jobs.submit("acme", question=question, mode="report", params={"trajectories": 1},
                                     review=True)
    await page.goto(service.url + "/")
    await page.fill("#api-key", key.secret)
    await page.click("#sign-in-form button")
    await page.wait_for_selector("#jobs tbody tr")
    fits = "(id) => document.getElementById(id).scrollWidth <= document.querySelector('main').clientWidth"
    assert await page.evaluate(fits, "jobs")
    await page.goto(f"{service.url}/#/jobs/{job.id}")
    await page.wait_for_selector(f"#job-question:has-text('{'a' * 50}')")
    assert await page.evaluate(fits, "job-question")


async def test_a_job_held_for_review_shows_its_plan_and_approval_deadline_until_approved(service, page, store):
    await signed_in(page, service, store)
    await page.fill("#question", "Which module parses command-line options?")
    await page.fill("#trajectories", "2")
    await page.check("#review")
    await page.click("#submit-form button")
    await page.wait_for_selector("#approve", state="visible")
    assert await page.text_content("#job-status") == "awaiting_approval"
    job = (await store.jobs.list("acme"))[0][0]
    assert job.status == "awaiting_approval" and job.approve_by is not None
    assert "Plan" in await page.text_content("#plan")
    assert "or it is cancelled" in await page.text_content("#approve-by") and await page.is_visible("#approve-by")
    await page.click("#approve")
    await page.wait_for_selector("#approve", state="hidden")
    assert not await page.is_visible("#approve-by")
    assert (await store.jobs.get(job.id)).status != "awaiting_approval"


async def test_what_the_form_leaves_blank_is_the_deployments_setting(service, page, store):
    service.kill_api()
    await service.start_api(env={"HEAVY_MODE": "answer", "HEAVY_TRAJECTORIES": "3", "HEAVY_MAX_STEPS": "7"})
    await signed_in(page, service, store)
    await page.fill("#question", "Which module parses command-line options?")
    await page.fill("#step-tokens", "64")
    await page.check("#review")  # held: the plan is what is checked, no worker takes it
    await page.click("#submit-form button")
    await page.wait_for_selector("#approve", state="visible")
    job = (await store.jobs.list("acme"))[0][0]
    assert job.mode == "answer"
    assert (job.params["trajectories"], job.params["max_steps"], job.params["step_tokens"]) == (3, 7, 64)


async def test_the_job_list_pages_through_older_jobs(service, page, store):
    key = await store.tenants.create_key("acme")
    await store.tenants.set_limits("acme", max_jobs=100)
    store.jobs.max_held_jobs = 57  # the deployment's cap (HEAVY_TENANT_MAX_HELD_JOBS), raised for this test
    for i in range(55):  # held for review: no worker takes them
        await store.jobs.submit("acme", question=f"question {i:02d}", mode="report", params={"trajectories": 1},
                                review=True)
    await page.goto(service.url + "/")
    await page.fill("#api-key", key.secret)
    await page.click("#sign-in-form button")
    await page.wait_for_selector("#page-info:has-text('1–50 of 55')")
    assert await page.locator("#jobs tbody tr").count() == 50 and await page.is_disabled("#newer")
    assert "question 54" in await page.locator("#jobs tbody tr").first.text_content()  # newest first
    await page.focus("#older")  # the keyboard's Enter and Space on the pager
    await page.keyboard.press("Enter")
    await page.wait_for_selector("#page-info:has-text('51–55 of 55')")
    assert await page.evaluate("document.activeElement.id") == "newer"  # not dropped as 'older' is disabled
    rows = await page.locator("#jobs tbody tr td:first-child").all_text_contents()
    assert rows == [f"question {i:02d}" for i in (4, 3, 2, 1, 0)] and await page.is_disabled("#older")
    for i in (55, 56):  # newer jobs: the page, polled again, holds its place (by offset it showed 06 to 00)
        await store.jobs.submit("acme", question=f"question {i:02d}", mode="report", params={"trajectories": 1},
                                review=True)
    await page.wait_for_selector("#page-info:has-text('53–57 of 57')")
    assert await page.locator("#jobs tbody tr td:first-child").all_text_contents() == rows
    await page.keyboard.press("Space")  # 'newer': back to the newest jobs, the new ones with them
    await page.wait_for_selector("#page-info:has-text('1–50 of 57')")
    assert await page.evaluate("document.activeElement.id") == "older"
    assert "question 56" in await page.locator("#jobs tbody tr").first.text_content()
    await page.select_option("#status-filter", "done")  # another filter starts at its newest page
    await page.wait_for_selector("#tenant-status:has-text('0 job(s) done')")
    assert await page.locator("#jobs tbody tr").count() == 0 and await page.is_hidden("#older")


async def test_a_job_opened_while_the_api_is_down_says_so_and_opens_once_it_is_back(service, page, store):
    key = await store.tenants.create_key("acme")
    job, _ = await store.jobs.submit("acme", question="Which module parses command-line options?", mode="report",
                                     params={"trajectories": 1}, review=True)
    await page.goto(service.url + "/")
    await page.fill("#api-key", key.secret)
    await page.click("#sign-in-form button")
    await page.wait_for_selector("#submit-form", state="visible")
    service.kill_api()
    await page.evaluate(f"location.hash = '#/jobs/{job.id}'")
    await page.wait_for_selector("#job-stage:has-text('cannot reach the heavy API')")
    await service.start_api()
    await page.wait_for_selector("#job-question:has-text('Which module parses')", timeout=30_000)
    assert await page.text_content("#job-status") == "awaiting_approval"
    await page.evaluate("location.hash = '#/jobs/" + "0" * 32 + "'")  # no such job: said, not retried
    await page.wait_for_selector("#job-stage:has-text('no job')")



async def test_a_job_page_refused_its_event_stream_says_why_and_waits_as_told(service, page, store):
    await service.start_api_again(env={"HEAVY_TENANT_MAX_STREAMS": "1"})
    service.model_gate.clear()  # the job runs while another client holds the tenant's one stream
    await signed_in(page, service, store)
    other = (await store.tenants.create_key("acme")).secret  # another client of the tenant
    try:
        async with httpx.AsyncClient(base_url=service.url, headers={"Authorization": f"Bearer {other}"},
                                     timeout=30) as client:
            job_id = (await client.post("/v1/jobs", json=JOB)).json()["id"]
            held = await client.send(client.build_request("GET", f"/v1/jobs/{job_id}/events"), stream=True)
            assert held.status_code == 200
            await page.goto(f"{service.url}/#/jobs/{job_id}")
            await page.wait_for_selector("#connection:has-text('limit of 1 open event streams')")
            told = await page.text_content("#connection")
            assert re.search(r"trying again in ([1-9]|[12][0-9]|30) s$", told), told  # the Retry-After, not 0.5-5 s
            await held.aclose()
        await page.wait_for_selector("#connection:has-text('live')", timeout=60_000)
    finally:
        service.model_gate.set()
    await page.wait_for_selector("#report:not([hidden])", timeout=60_000)
