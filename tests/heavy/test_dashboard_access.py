"""The dashboard as every reader meets it, in real Chromium: with the keyboard alone, on a phone-wide screen, and
with a report whose Markdown holds what a page or a model may write (HTML, an image, long lines)."""

import pytest

from heavy.events import ReportReady
from tests.heavy.test_dashboard import signed_in

pytestmark = [pytest.mark.anyio, pytest.mark.browser, pytest.mark.slow]

PHONE = {"width": 375, "height": 740}
QUESTION = "Which module parses command-line options?"
LONG_REPORT = f"""# {QUESTION}

**Answer:** argparse [1]

| module | what it parses | since | where the docs are |
|---|---|---|---|
| argparse | options, positional arguments and sub-commands | 3.2 | https://docs.python.org/3/library/argparse.html |

```
python -m argparse --a-very-long-option-name-that-goes-on={"and-on-" * 20}
```

- “<img src=x onerror=window.pwned=1>” [1]
- ![what the job found](http://127.0.0.1:9/leak?found=argparse)

## Sources

1. [argparse](http://corpus/argparse) — http://corpus/{"a" * 200}
"""
RESULT = {"status": "done", "answer": "argparse", "agreement": 1.0, "votes": {"argparse": 1}, "trajectories": [{}],
          "tokens": {"prompt": 10, "completion": 5}, "cost_usd": 0.0, "sources": [{}], "stop_reason": "all_done",
          "dropped_claims": [], "refuted_claims": []}
PAGE_FITS = "document.documentElement.scrollWidth <= document.documentElement.clientWidth"


async def held_job(store):
    """A job of tenant acme held for review: no worker takes it."""
    job, _ = await store.jobs.submit("acme", question=QUESTION, mode="report", params={"trajectories": 1},
                                     review=True)
    return job


async def test_a_keyboard_alone_signs_in_and_opens_a_job_from_the_list(service, page, store):
    """...and what a screen reader announces: a refusal as an alert, the job's status as it changes."""
    key = await store.tenants.create_key("acme")
    job = await held_job(store)
    await page.goto(service.url + "/")
    await page.keyboard.press("Tab")
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.id") == "api-key"
    await page.keyboard.type("hv_wrong")
    await page.keyboard.press("Enter")
    await page.get_by_role("alert").filter(has_text="unknown").wait_for()
    await page.keyboard.press("Control+A")
    await page.keyboard.type(key.secret)
    await page.keyboard.press("Enter")
    await page.wait_for_selector(f"#jobs tbody tr[data-id='{job.id}']")
    for _ in range(20):  # the form's fields, the filter, then the list's rows
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.closest('#jobs') !== null"):
            break
    else:
        pytest.fail("no row of the job list takes the keyboard's focus")
    await page.keyboard.press("Enter")
    await page.wait_for_selector(f"#job-question:has-text('{QUESTION}')")
    assert "awaiting_approval" in await page.get_by_role("status").text_content()


async def test_a_phone_wide_screen_never_scrolls_sideways_and_a_reports_markup_stays_text(service, page, store):
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    await page.set_viewport_size(PHONE)
    await signed_in(page, service, store)
    job = await held_job(store)
    await page.wait_for_selector(f"#jobs tbody tr[data-id='{job.id}']")
    assert await page.evaluate(PAGE_FITS), "the job list pushes the page wider than the screen"
    await page.goto(f"{service.url}/#/jobs/{job.id}")
    await page.wait_for_selector("#approve", state="visible")  # with its plan, and four buttons in a row
    assert await page.evaluate(PAGE_FITS), "the held job's page is wider than the screen"

    event = ReportReady(job_id=job.id, answer="argparse", agreement=1.0, partial=False, sources=1, total_tokens=15)
    await store.jobs.finish(job, "done", allowed=("awaiting_approval",), event=event.to_dict(),
                            report=(LONG_REPORT, RESULT))
    await page.goto(f"{service.url}/#/jobs/{job.id}")
    await page.wait_for_selector("#aggregation[data-filled=result]", timeout=30_000)
    assert "a-very-long-option-name" in await page.text_content("#report pre")
    assert await page.evaluate(PAGE_FITS), "the report pushes the page wider than the screen"
    # the page's markup is shown as text; the image the model named is a link, not a request made unasked
    assert "<img src=x onerror=window.pwned=1>" in await page.text_content("#report")
    assert await page.locator("#report img").count() == 0 and await page.evaluate("window.pwned") is None
    assert await page.locator("#report a[href$='/leak?found=argparse']").count() == 1
    assert not [url for url in requested if "/leak" in url]


async def test_eight_lanes_live_then_finish_now_reports_and_cancel_ends_without_a_report(service, page, store):
    await signed_in(page, service, store)
    service.model_gate.clear()  # every trajectory waits on its first model call: the job is running, not done
    await page.fill("#question", QUESTION)
    await page.fill("#trajectories", "8")
    await page.click("#submit-form button")
    await page.wait_for_selector("#lane-7 .action:has-text('search(')")
    assert await page.locator(".lane").count() == 8
    await page.wait_for_selector("#finish:not([disabled])")
    await page.click("#finish")
    service.model_gate.set()
    await page.wait_for_selector("#report:not([hidden])", timeout=60_000)
    assert await page.text_content("#job-status") == "partial"
    assert "finish_now" in await page.text_content("#agg-status")
    assert await page.is_disabled("#finish") and await page.is_disabled("#cancel") and await page.is_enabled("#delete")

    service.model_gate.clear()
    await page.goto(service.url + "/#/")
    await page.fill("#question", QUESTION)
    await page.click("#submit-form button")
    await page.wait_for_selector("#lane-0 .action:has-text('search(')")
    await page.click("#cancel")
    await page.wait_for_selector("#job-status:has-text('cancelled')")
    service.model_gate.set()
    await page.wait_for_selector("#agg-status:has-text('cancelled')")
    assert await page.is_hidden("#report") and await page.is_enabled("#delete")
