"""The dashboard's own defences, in real Chromium: another site cannot frame it, markup that reached its HTML would
run no script, and its content security policy leaves the dashboard itself whole."""

import httpx
import pytest

from heavy.events import ReportReady
from tests.heavy.test_dashboard import signed_in
from tests.heavy.test_dashboard_access import RESULT, held_job
from tests.net import free_port

pytestmark = [pytest.mark.anyio, pytest.mark.browser, pytest.mark.slow]

ALIGNED_REPORT = """# Which module parses options?

**Answer:** argparse [1]

| module | since |
|---|---:|
| argparse | 3.2 |

## Sources

1. [argparse](http://corpus/argparse)
"""


async def test_another_site_cannot_frame_the_dashboard(service, page):
    """A page elsewhere framing the dashboard could have a signed-in user click its Cancel or Delete unseen."""
    await page.set_content(f'<iframe src="{service.url}/"></iframe>')  # loaded with its frames
    (framed,) = page.main_frame.child_frames
    assert await framed.locator("#sign-in-form").count() == 0, "the dashboard was drawn inside another page"


async def test_markup_that_reached_the_page_would_run_no_script(service, page, store):
    await signed_in(page, service, store)
    await page.evaluate("""() => {
        const report = document.getElementById("report");
        report.innerHTML = '<img src="missing.png" onerror="window.pwned = 1">';
        // added after the inline handler: it runs once that one has run, or was refused
        report.querySelector("img").addEventListener("error", () => { report.dataset.failed = "yes"; });
    }""")
    await page.wait_for_selector("#report[data-failed=yes]", state="attached")
    assert await page.evaluate("window.pwned") is None


async def test_the_policy_leaves_the_dashboard_whole(service, page, store):
    refused = []
    page.on("console", lambda message: refused.append(message.text) if "Content Security Policy" in message.text
            else None)
    await signed_in(page, service, store)
    job = await held_job(store)
    await page.goto(f"{service.url}/#/jobs/{job.id}")
    await page.wait_for_selector("#approve", state="visible")  # its plan drawn
    event = ReportReady(job_id=job.id, answer="argparse", agreement=1.0, partial=False, sources=1, total_tokens=15)
    await store.jobs.finish(job, "done", allowed=("awaiting_approval",), event=event.to_dict(),
                            report=(ALIGNED_REPORT, RESULT))
    await page.wait_for_selector("#aggregation[data-filled=result]", timeout=30_000)
    cell = page.locator("#report td", has_text="3.2")
    assert await cell.evaluate("td => getComputedStyle(td).textAlign") == "right"  # markdown-it's style attribute
    assert refused == []
    async with httpx.AsyncClient() as client:  # Swagger UI's own inline script runs: only framing is refused there
        docs = await client.get(f"{service.url}/docs")
    assert docs.headers["content-security-policy"] == "frame-ancestors 'none'"


async def test_a_path_naming_another_host_leaves_the_page_on_the_dashboards_origin(service, page):
    """The API serves the dashboard at `//host/..%2f` (its path decodes to //host/../, the folder itself). The page's
    move to its slash form made that `//host/..%2f/`, a URL of the other host: a link to the service sent whoever
    followed it to any site (one asking for their API key). Here the other host is a loopback port no one serves."""
    elsewhere = f"127.0.0.1:{free_port()}"
    await page.goto(f"{service.url}//{elsewhere}/..%2f")
    await page.wait_for_selector("#sign-in-form", state="visible")  # app.js loaded and ran
    assert page.url == f"{service.url}//{elsewhere}/..%2f/"


async def test_a_key_revoked_while_signed_in_sends_the_page_back_to_sign_in_saying_why(service, page, store):
    """A 401 to any view's request (here the job list's poll) forgets the key and routes to signing in: api.js's
    handleAuth calls back the router app.js gives it, a path no other test takes."""
    await signed_in(page, service, store)
    key = (await store.tenants.list_keys())[0]
    await store.tenants.revoke(key.key_id)
    await page.wait_for_selector("#sign-in-form", state="visible")
    assert await page.text_content("#sign-in-error") == "unknown or revoked API key"
    assert await page.is_hidden("#jobs-view") and await page.is_hidden("#sign-out")
