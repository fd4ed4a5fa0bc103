"""The dashboard as every reader meets it, in real Chromium: with the keyboard alone (and what a screen reader is
told), on a phone-wide screen, in colours that read, and with a report whose Markdown holds what a page or a model may
write (HTML, an image, long lines)."""

import re

import pytest

from heavy.events import ReportReady
from tests.heavy.test_dashboard import signed_in
from tests.heavy.worker_helpers import wait_for

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


async def reported(store, job) -> None:
    """The held `job` ended done with LONG_REPORT, as a worker ends one."""
    event = ReportReady(job_id=job.id, answer="argparse", agreement=1.0, partial=False, sources=1, total_tokens=15)
    await store.jobs.finish(job, "done", allowed=("awaiting_approval",), event=event.to_dict(),
                            report=(LONG_REPORT, RESULT))


async def focused(page) -> str:
    """The focused element, as #id or tag."""
    return await page.evaluate("document.activeElement.id ? '#' + document.activeElement.id"
                               " : document.activeElement.tagName")


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
    row = page.locator(f"#jobs tr[data-id='{job.id}']")
    await row.evaluate("(node) => { node.dataset.drawn = 'before'; }")
    await page.wait_for_selector(f"#jobs tr[data-id='{job.id}']:not([data-drawn])")  # the list's poll drew it anew
    assert await page.evaluate("document.activeElement.closest('#jobs') !== null"), "the poll dropped the focus"
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

    await reported(store, job)
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


async def test_each_view_a_keyboard_opens_takes_its_focus_and_a_citation_takes_it_to_the_source(service, page, store):
    """A link or button pressed went out of sight with its view: the focus fell to the page's body, where a screen
    reader said nothing of the new view; a citation followed left it on the citation, not on its source."""
    key = await store.tenants.create_key("acme")
    job = await held_job(store)
    await reported(store, job)
    await page.goto(service.url + "/")
    await page.focus("#api-key")
    await page.keyboard.type(key.secret)
    await page.keyboard.press("Enter")
    await page.wait_for_selector(f"#jobs tbody tr[data-id='{job.id}']")
    assert await focused(page) == "H1" and await page.title() == "New job — heavy"
    await page.get_by_role("heading", name="Jobs", exact=True).wait_for()  # not "Jobs all": its filter apart
    await page.keyboard.press("Tab")
    assert await focused(page) == "#question"  # Tab goes on from the heading

    await page.focus(f"#jobs a[href='#/jobs/{job.id}']")
    await page.keyboard.press("Enter")
    await page.wait_for_selector("#report:not([hidden])")
    assert await focused(page) == "#job-question" and await page.title() == f"{QUESTION} — heavy"
    assert "done" in await page.get_by_role("status").text_content()  # said as it changes (a live region)
    await page.focus("#report a.cite")
    await page.keyboard.press("Enter")
    assert await focused(page) == "#src-1" and "highlight" in await page.get_attribute("#src-1", "class")

    back = page.get_by_role("link", name="all jobs", exact=True)  # named without its arrow glyph
    await back.focus()
    await page.keyboard.press("Enter")
    await page.wait_for_selector("#jobs-view", state="visible")
    assert await focused(page) == "H1" and await page.evaluate("document.activeElement.textContent") == "New job"


def contrast(colours: list[str]) -> float:
    """WCAG's contrast ratio of two CSS rgb() colours."""
    def luminance(colour: str) -> float:
        channels = [int(c) / 255 for c in re.findall(r"\d+", colour)[:3]]
        r, g, b = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * r + 0.7152 * g + 0.0722 * b
    light, dark = sorted(map(luminance, colours), reverse=True)
    return (light + 0.05) / (dark + 0.05)


# the text's colour and the background it is on (its nearest ancestor's that has one)
COLOURS = """(selector) => {
  const node = document.querySelector(selector);
  let under = node;
  while (getComputedStyle(under).backgroundColor === "rgba(0, 0, 0, 0)") under = under.parentElement;
  return [getComputedStyle(node).color, getComputedStyle(under).backgroundColor];
}"""


async def test_a_phone_wide_job_list_scrolls_by_keyboard_and_its_colours_read(service, page, store):
    """On a 375 px screen (or at 200% zoom) the list's last columns are out of sight in their scrolling box, which
    the keyboard could not reach (its links take the focus, not the box); and a done job's green status and the grey
    texts on the page's background were under WCAG's 4.5:1."""
    await page.set_viewport_size(PHONE)
    await signed_in(page, service, store)
    job = await held_job(store)
    await reported(store, job)
    await page.wait_for_selector("#jobs td.status-done")
    box = page.get_by_role("region", name="job list")
    assert await box.evaluate("(node) => node.scrollWidth > node.clientWidth")  # what is tested here
    for _ in range(20):
        await page.keyboard.press("Tab")
        if await box.evaluate("(node) => node === document.activeElement"):
            break
    else:
        pytest.fail("the job list's scrolling box never takes the keyboard's focus")
    await page.keyboard.press("ArrowRight")
    await wait_for(lambda: box.evaluate("(node) => node.scrollLeft > 0"))  # Chromium scrolls smoothly: in frames
    assert await page.evaluate(PAGE_FITS)

    ratios = {name: contrast(await page.evaluate(COLOURS, selector))
              for name, selector in (("a done job's status", "#jobs td.status-done"), ("a label", "form label"))}
    await page.goto(f"{service.url}/#/jobs/{job.id}")
    await page.wait_for_selector("#report:not([hidden])")  # the connection's line: grey, on the page's grey
    ratios |= {name: contrast(await page.evaluate(COLOURS, selector))
               for name, selector in (("the connection", "#connection"), ("a lane's figures", ".lane dt"))}
    assert all(ratio >= 4.5 for ratio in ratios.values()), ratios
