"""The job page's Aggregation panel in real Chromium: a finished job's figures as its JSON result gives them, a partial
job's stop reason (live while the aggregator works, then from the result), and answers shown as text, never as HTML.
The expected figures are read from the API's JSON result, never written here."""

import httpx
import pytest

from heavy.llm.types import LLMError
from tests.heavy.fakes import call
from tests.heavy.worker_helpers import researcher, step_of

pytestmark = [pytest.mark.anyio, pytest.mark.browser, pytest.mark.slow]

PARAMS = {"trajectories": 3, "max_steps": 4, "step_tokens": 64, "trajectory_tokens": 10_000, "job_tokens": 50_000,
          "deadline_s": 120, "tools": ["search"]}
PANEL = ("status", "answer", "agreement", "tokens", "cost", "sources")
XSS = "<img src=x onerror=window.pwned=1>"


def answering(*answers: str):
    """The researcher's steps, with trajectory k answering answers[k]."""
    def script(request):
        if request.trajectory >= 0 and not request.forced and step_of(request) >= 2:
            return call("answer", answer=answers[request.trajectory], confidence=0.9)
        return researcher(request)
    return script


async def open_job(service, page, store, **params) -> tuple[str, str]:
    """Submit a report job, sign in and open its page; the API key and the job id."""
    key = await store.tenants.create_key("acme")
    job, _ = await store.jobs.submit("acme", question="Which module parses command-line options?", mode="report",
                                     params={**PARAMS, **params})
    await page.goto(service.url + "/")
    await page.fill("#api-key", key.secret)
    await page.click("#sign-in-form button")
    await page.wait_for_selector("#submit-form", state="visible")
    await page.goto(f"{service.url}/#/jobs/{job.id}")
    return key.secret, job.id


async def result_of(service, secret: str, job_id: str) -> dict:
    """The job's JSON result as the API serves it."""
    async with httpx.AsyncClient(base_url=service.url, headers={"Authorization": f"Bearer {secret}"}) as client:
        response = await client.get(f"/v1/jobs/{job_id}/report", headers={"Accept": "application/json"})
    response.raise_for_status()
    return response.json()


async def panel(page) -> dict[str, str]:
    """The panel's texts once it holds the result's figures."""
    await page.wait_for_selector("#aggregation[data-filled=result]", timeout=60_000)
    return {name: await page.text_content(f"#agg-{name}") for name in PANEL}


async def test_a_finished_jobs_panel_shows_the_figures_of_its_result(service, page, store):
    service.script = answering("argparse", "argparse", "getopt")
    secret, job_id = await open_job(service, page, store)
    shown = await panel(page)
    result = await result_of(service, secret, job_id)
    assert result["status"] == "done" and len(result["votes"]) > 1 and result["cost_usd"] > 0  # what is tested here

    assert shown["status"] == result["status"]
    assert shown["answer"] == result["answer"]
    agreeing = result["votes"][result["answer"]]
    assert shown["agreement"] == f"{agreeing} of {len(result['trajectories'])} trajectories agree"
    ranked = sorted(result["votes"].items(), key=lambda vote: (vote[0] != result["answer"], -vote[1]))
    assert await page.locator("#agg-votes li").all_text_contents() == [
        f"{answer} {n} vote{'' if n == 1 else 's'}" for answer, n in ranked]
    tokens = result["tokens"]
    assert shown["tokens"] == f"{tokens['prompt']:,} prompt · {tokens['completion']:,} completion"
    assert shown["cost"] == f"${result['cost_usd']:.4f}"
    assert shown["sources"] == str(len(result["sources"]))


async def test_a_partial_jobs_panel_shows_its_stop_reason_live_and_after(service, page, store):
    service.aggregator_gate.clear()  # the job waits in aggregation: what the page shows then comes from the events
    # the trajectories' share of it is spent within the first model steps; the report pass is kept the rest
    secret, job_id = await open_job(service, page, store, job_tokens=2400)
    await page.wait_for_selector("#agg-status:has-text('aggregating')", timeout=60_000)
    live = await page.text_content("#agg-status")
    assert await page.get_attribute("#aggregation", "data-filled") is None
    service.aggregator_gate.set()

    shown = await panel(page)
    result = await result_of(service, secret, job_id)
    assert result["status"] == "partial" and result["stop_reason"] != "all_done"
    assert result["stop_reason"] in live
    assert shown["status"].startswith("partial") and result["stop_reason"] in shown["status"]


async def test_answers_with_html_are_shown_as_text(service, page, store):
    service.script = answering(XSS, XSS, "<b>getopt</b>")
    secret, job_id = await open_job(service, page, store)
    shown = await panel(page)
    result = await result_of(service, secret, job_id)
    assert result["answer"] == XSS and "<b>getopt</b>" in result["votes"]

    assert shown["answer"] == XSS
    votes = await page.locator("#agg-votes li .answer").all_text_contents()
    assert votes == [XSS, "<b>getopt</b>"]
    assert await page.locator("#aggregation img, #aggregation b").count() == 0
    assert await page.evaluate("window.pwned") is None


async def test_a_report_pass_that_failed_is_said_in_the_panel(service, page, store):
    def script(request):
        if request.request_id == "report":
            raise LLMError("HTTP 503: the model endpoint is restarting")
        return researcher(request)

    service.script = script
    secret, job_id = await open_job(service, page, store)
    shown = await panel(page)
    result = await result_of(service, secret, job_id)
    assert result["status"] == "partial" and result["stop_reason"] == "all_done"
    assert shown["status"] == f"partial: no findings, {result['report_error']}"
    assert "HTTP 503: the model endpoint is restarting" in shown["status"]
