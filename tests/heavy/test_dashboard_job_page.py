"""A job's page in real Chromium as its job ends in a way with no report: what it cost, from the job's record."""

import pytest

from tests.heavy.test_dashboard import signed_in
from tests.heavy.test_dashboard_access import QUESTION

pytestmark = [pytest.mark.anyio, pytest.mark.browser, pytest.mark.slow]


async def test_a_cancelled_job_shows_what_it_cost_from_its_record(service, page, store):
    """A cancelled job has no report, where the page read a job's cost: it showed none, though the job was charged."""
    await signed_in(page, service, store)
    await page.fill("#question", QUESTION)
    await page.fill("#trajectories", "2")
    await page.click("#submit-form button")
    await page.wait_for_selector("#lane-0 .step:text-matches('^[1-9]')", timeout=30_000)  # some tokens spent
    assert await page.is_hidden("#job-spent")  # not known while the job runs
    service.model_gate.clear()  # the next steps wait: the job is still running when it is cancelled
    await page.click("#cancel")
    await page.wait_for_selector("#job-status:has-text('cancelled')", timeout=30_000)
    service.model_gate.set()
    job = (await store.jobs.list("acme"))[0][0]
    assert job.status == "cancelled" and job.cost_usd > 0  # what is tested here
    spent = f"Spent {job.tokens:,} tokens, ${job.cost_usd:.4f}"
    await page.wait_for_selector(f"#job-spent:has-text('{spent}')")  # the live page, told by job_cancelled
    assert await page.is_hidden("#report")
    await page.goto(f"{service.url}/#/")
    await page.goto(f"{service.url}/#/jobs/{job.id}")  # opened anew: from the record read as the page opens
    await page.wait_for_selector(f"#job-spent:has-text('{spent}')")
