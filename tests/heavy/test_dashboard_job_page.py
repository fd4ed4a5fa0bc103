"""A job's page in real Chromium as its job ends in a way with no report (what it cost, from the job's record), and as
a worker that took the job over runs a crashed trajectory again (its lane open again until the rerun's end)."""

import pytest

from heavy.events import JobStarted, TrajectoryDone, TrajectoryStep
from tests.heavy.test_dashboard import signed_in
from tests.heavy.test_dashboard_access import QUESTION, held_job

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


def step(job_id: str, k: int, n: int) -> dict:
    return TrajectoryStep(job_id=job_id, trajectory=k, step=n, action="tool_call", thought="", prompt_tokens=10,
                          completion_tokens=5, total_tokens=15 * n).to_dict()


def done(job_id: str, k: int, *, answer: str = "", error: str = "") -> dict:
    return TrajectoryDone(job_id=job_id, trajectory=k, answer=answer, confidence=0.9 if answer else 0.0,
                          stop_reason="answered" if answer else "error", steps=2, total_tokens=30, cited=[],
                          error=error).to_dict()


async def test_a_lane_ended_by_a_crash_reopens_while_a_takeovers_rerun_steps_and_ends_with_its_answer(
        service, page, store):
    """The stream a takeover writes (tests/heavy/test_worker_trajectory_ends.py): trajectory 0's error done, then its
    rerun's steps from its last checkpoint, then the rerun's done. Until that done, the lane said 'error' (in the
    colours of an ended lane) over the rerun's live steps."""
    await signed_in(page, service, store)
    job = await held_job(store)  # no worker takes it: the test writes its events
    for event in (JobStarted(job_id=job.id, question=QUESTION, mode="report", trajectories=1).to_dict(),
                  step(job.id, 0, 1), done(job.id, 0, error="RuntimeError: a parser bug")):
        await store.jobs.append_event(job.id, event)
    await page.goto(f"{service.url}/#/jobs/{job.id}")
    await page.wait_for_selector("#job-view[data-applied='3']")
    lane = page.locator("#lane-0")
    assert await lane.locator(".state").text_content() == "error"
    assert await lane.get_attribute("class") == "lane done failed"  # red, not an answered lane's green

    await store.jobs.append_event(job.id, step(job.id, 0, 2))  # the rerun's, followed live
    await page.wait_for_selector("#job-view[data-applied='4']")
    assert await lane.locator(".step").text_content() == "2"
    assert await lane.locator(".state").text_content() == "running"
    assert await lane.get_attribute("class") == "lane"

    await store.jobs.append_event(job.id, done(job.id, 0, answer="argparse"))
    await page.wait_for_selector("#job-view[data-applied='5']")
    assert await lane.locator(".state").text_content() == "answered"
    assert await lane.locator(".action").text_content() == "answer: argparse"
    assert await lane.get_attribute("class") == "lane done"
