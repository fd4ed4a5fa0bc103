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
    key = await store.tenants.create_key("acme")
    job = await held_job(store)
    await page.goto(service.url + "/")
    await page.keyboard.press("Tab")
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.id") == "api-key"
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
    assert await page.text_content("#job-status") == "awaiting_approval"


async def test_a_phone_wide_screen_never_scrolls_sideways_and_a_reports_markup_stays_text(service, page, store):
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    await page.set_viewport_size(PHONE)
    await signed_in(page, service, store)
    job = await held_job(store)
    await page.wait_for_selector(f"#jobs tbody tr[data-id='{job.id}']")
    assert await page.evaluate(PAGE_FITS), "the job list pushes the page wider than the screen"

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
