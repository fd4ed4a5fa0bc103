"""The dashboard in real Chromium with text in a right-to-left script and text a cut would break: each question,
answer and paragraph of a report reads in its own direction, and what is clipped is cut between characters."""

import pytest

from heavy.events import ReportReady
from tests.heavy.test_dashboard import signed_in
from tests.heavy.test_dashboard_access import RESULT

pytestmark = [pytest.mark.anyio, pytest.mark.browser, pytest.mark.slow]

QUESTION = "ما هي عاصمة مصر؟"
ENGLISH = "Cairo is the capital of Egypt [1]."
ARABIC = "القاهرة هي عاصمة مصر [1]."
# clipped at 200 UTF-16 units (aggregation.js): the 200th is the first half of a surrogate pair, then a flag's first
ANSWER = "القاهرة " + "ا" * 191 + "😀🇪🇬 وأكبر مدنها"
REPORT = f"# {QUESTION}\n\n{ARABIC}\n\n{ENGLISH}\n\n## Sources\n\n1. [القاهرة](http://corpus/cairo)\n"
DIRECTION = "(node) => getComputedStyle(node).direction"
# a lone surrogate: half a character
BROKEN = r"(node) => /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/.test(node.textContent)"


async def test_right_to_left_text_reads_right_to_left_and_clipped_text_keeps_whole_characters(service, page, store):
    await signed_in(page, service, store)
    job, _ = await store.jobs.submit("acme", question=QUESTION, mode="report", params={"trajectories": 1},
                                     review=True)  # held: no worker takes it
    listed = page.locator(f"#jobs tr[data-id='{job.id}'] a")
    await listed.wait_for()
    assert await listed.evaluate(DIRECTION) == "rtl"

    event = ReportReady(job_id=job.id, answer=ANSWER, agreement=1.0, partial=False, sources=1, total_tokens=15)
    result = {**RESULT, "answer": ANSWER, "votes": {ANSWER: 1}}
    await store.jobs.finish(job, "done", allowed=("awaiting_approval",), event=event.to_dict(), report=(REPORT, result))
    await page.goto(f"{service.url}/#/jobs/{job.id}")
    await page.wait_for_selector("#aggregation[data-filled=result]", timeout=30_000)
    assert await page.locator("#job-question").evaluate(DIRECTION) == "rtl"
    assert await page.locator("#report p", has_text="القاهرة هي").evaluate(DIRECTION) == "rtl"
    assert await page.locator("#report p", has_text="Cairo is").evaluate(DIRECTION) == "ltr"  # each its own
    for shown in (page.locator("#agg-answer"), page.locator("#agg-votes .answer")):
        assert await shown.evaluate(DIRECTION) == "rtl"
        assert not await shown.evaluate(BROKEN)
        assert (await shown.text_content()).endswith("ا…")  # cut before the emoji, not inside it
