"""Report mode when the report pass writes nothing: the report says why, is partial, and still holds what the
trajectories found (their answers, their fetched pages' own sentences)."""

import asyncio
import dataclasses
import html
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from heavy.agent.context import estimate_tokens
from heavy.aggregate import aggregate
from heavy.aggregate.markers import as_text
from heavy.aggregate.report import FALLBACK_LEAD
from heavy.api.report_html import report_html
from heavy.display import LiveBoard
from heavy.events import JobFailed, ReportReady
from heavy.llm.openai_backend import OpenAIBackend
from heavy.llm.retry import RetryPolicy
from heavy.llm.types import Completion, ContextLengthError, LLMError, RetriableLLMError, Usage
from heavy.scheduler import JobControl
from tests.heavy.fakes import ScriptedBackend, source, text
from tests.heavy.test_aggregate import LOUVRE, result
from tests.heavy.test_scheduler import researcher, run, spec

pytestmark = pytest.mark.anyio

QUESTION = "When was the Eiffel Tower finished?"
TOWER = source("http://corpus/tower", "The Eiffel Tower is a landmark. The tower was finished in 1889 for a fair.")


def trajectories():
    return [result(0, "1889", cited=[TOWER], evidence=[TOWER, LOUVRE]), result(1, "1887", cited=[LOUVRE]),
            result(2, "1889", cited=[TOWER])]


def failing_report_pass(error: Exception):
    def script(request):
        if request.request_id == "report":
            raise error
        return text("yes")
    return script


def assert_honest_partial_report(job, why: str) -> None:
    """The report says why it has no findings, at its top, in its JSON and its HTML; it is partial; the vote, the
    quotes of the fetched page and every trajectory's answer are there; nothing says the pass wrote claims."""
    data = json.loads(job.to_json())
    assert job.status == "partial" and data["partial"] and why in data["report_error"]
    top = job.markdown.split("**Answer:**")[0]
    assert "> Partial report: the report pass, which writes the findings, wrote none:" in top and as_text(why) in top
    assert FALLBACK_LEAD not in job.markdown  # it wrote no claim at all: not "no claim a fetched page supports"
    assert "**Answer:** 1889 [1]" in job.markdown and "- “The Eiffel Tower is a landmark.” [1]" in job.markdown
    # each answer with the pages that hold its words, and those its trajectories cited (which findings would merge)
    assert "- “1889”: trajectories 1, 3 — its words are on [1]; cited [1]\n" in job.markdown
    assert "- “1887”: trajectory 2 — its words are on no fetched page; cited [2]\n" in job.markdown
    assert [s.url for s in job.sources] == [TOWER.url, LOUVRE.url]
    assert html.escape(why, quote=False) in report_html(job.markdown)


@pytest.mark.parametrize("error", [
    RetriableLLMError("giving up after 5 attempts: ConnectError: [Errno 111] Connection refused"),  # endpoint down
    LLMError("HTTP 401: Incorrect API key provided"),
    ContextLengthError("HTTP 400: maximum context length is 2048 tokens", prompt_tokens=2100, room=None),
    LLMError("the job's token grant has 12 tokens left (keeping 0), the request may take 900"),
])
async def test_a_report_pass_whose_request_failed_says_so_and_the_report_is_partial(error):
    job = await aggregate(job_id="j", question=QUESTION, mode="report", results=trajectories(),
                          backend=ScriptedBackend(failing_report_pass(error)))
    assert_honest_partial_report(job, f"its model request failed ({error})")
    assert job.stop_reason == "all_done"  # the trajectories all finished: that is not why it is partial


async def test_a_report_pass_whose_reply_held_no_text_says_so():
    def script(request):  # a thinking model that answered in its reasoning only
        if request.request_id == "report":
            return Completion(content="", reasoning="The tower was finished in 1889.", usage=Usage(300, 20))
        return text("yes")

    job = await aggregate(job_id="j", question=QUESTION, mode="report", results=trajectories(),
                          backend=ScriptedBackend(script))
    assert_honest_partial_report(job, "the model's reply held no text")


async def test_a_report_pass_cut_by_its_token_limit_before_a_sentence_ended_says_so():
    def script(request):  # a thinking model that reasoned through the whole limit
        if request.request_id == "report":
            return Completion(content="", reasoning="Let me think. " * 100, finish_reason="length",
                              usage=Usage(300, request.max_tokens))
        return text("yes")

    job = await aggregate(job_id="j", question=QUESTION, mode="report", results=trajectories(),
                          backend=ScriptedBackend(script))
    assert_honest_partial_report(job, "its 768-token limit cut it before it finished a sentence")
    assert job.usage.completion_tokens == 3 * 10 + 768  # what the cut pass spent is still counted


async def test_a_report_pass_that_wrote_only_unsupported_claims_is_no_failure():
    backend = ScriptedBackend(lambda request: text("Paris is lovely in spring [1]."))
    job = await aggregate(job_id="j", question=QUESTION, mode="report", results=trajectories(), backend=backend)
    assert job.status == "done" and job.report_error == "" and FALLBACK_LEAD in job.markdown
    assert "> Partial report" not in job.markdown and job.dropped_claims == ("Paris is lovely in spring [1].",)
    assert "; cited [" not in job.markdown  # the answer list as it was: the findings had their chance


class RefusingServer:
    """An OpenAI-compatible endpoint on loopback whose every request is refused: HTTP 400, its context too small."""

    REFUSAL = json.dumps({"error": {"message": "This model's maximum context length is 512 tokens. However, you "
                                               "requested 1500 tokens (732 in the messages, 768 in the completion)."
                                    }}).encode()

    def __init__(self) -> None:
        self.requests = 0
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                self.rfile.read(int(self.headers["Content-Length"]))
                state.requests += 1
                self.send_response(400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(state.REFUSAL)))
                self.end_headers()
                self.wfile.write(state.REFUSAL)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def refusing_server():
    server = RefusingServer()
    yield server
    server.server.shutdown()
    server.server.server_close()


async def test_a_report_pass_a_real_endpoint_refuses_says_the_servers_words(refusing_server):
    llm = OpenAIBackend(refusing_server.url, "m", retry=RetryPolicy(max_retries=0, backoff_s=0.001))
    try:
        job = await aggregate(job_id="j", question=QUESTION, mode="report", results=trajectories(), backend=llm)
    finally:
        await llm.aclose()
    assert refusing_server.requests >= 1
    assert_honest_partial_report(job, "maximum context length is 512 tokens")


async def test_a_jobs_report_ready_event_and_board_say_its_report_pass_failed():
    def script(request):
        if request.request_id == "report":
            raise LLMError("HTTP 503: upstream unavailable")
        return researcher()(request)

    job, sink = await run(spec(mode="report", trajectories=3), ScriptedBackend(script))
    ready = sink.of_type(ReportReady)[0]
    assert job.status == "partial" and ready.partial and ready.report_error == job.report_error
    assert "HTTP 503: upstream unavailable" in ready.report_error and not sink.of_type(JobFailed)
    board = LiveBoard(3)
    for event in sink.events:
        board.apply(event)
    assert board.stage == f"report ready (partial: no findings, {job.report_error})"


async def test_a_trajectory_that_failed_is_listed_with_its_error_not_as_having_found_nothing():
    backend = ScriptedBackend(lambda request: text("The Eiffel Tower was finished in 1889 [1]."))
    failed = dataclasses.replace(result(2, ""), stop_reason="error",
                                 error="RetriableLLMError: giving up after 5 attempts:\nRemoteProtocolError")
    agreed = await aggregate(job_id="j", question=QUESTION, mode="report", backend=backend,
                             results=[result(0, "1889", cited=[TOWER]), result(1, "1889", cited=[TOWER]), failed])
    said = "- No answer: trajectory 3 failed (RetriableLLMError: giving up after 5 attempts: RemoteProtocolError)"
    assert said in agreed.markdown and "- No answer: trajectory 3\n" not in agreed.markdown
    # with no answer at all, the headline says so, and the list still says which trajectory failed and why
    nothing = await aggregate(job_id="j", question=QUESTION, mode="report", backend=backend,
                              results=[result(0, ""), failed])
    assert "no trajectory found an answer" in nothing.markdown
    assert "- No answer: trajectory 1\n" in nothing.markdown and said in nothing.markdown


async def test_finish_now_while_the_report_pass_runs_aborts_it_and_reports_what_is_at_hand():
    # `heavy ask`'s first Ctrl-C during the aggregation: the report pass (a slow model, an endpoint being waited
    # for) is aborted, and the report is made of the vote and the pages at once, instead of after the pass or never
    control = JobControl()
    backend = ScriptedBackend(researcher(), delay_s=lambda r: 30 if r.trajectory < 0 else 0)
    task = asyncio.create_task(run(spec(mode="report", trajectories=3), backend, control))
    while not [r for r in backend.requests if r.request_id == "report"]:
        await asyncio.sleep(0.01)
    control.finish_now(aggregation_too=True)
    job, sink = await task
    assert backend.cancelled == ["report"] and job.status == "partial" and job.stop_reason == "all_done"
    assert "finish now" in job.report_error and sink.of_type(ReportReady)[0].report_error == job.report_error
    assert "**Answer:** Paris [1]" in job.markdown and as_text(job.report_error) in job.markdown
    report_pass = next(r for r in backend.requests if r.request_id == "report")  # its aborted work is charged
    trajectories = sum(t.usage.total_tokens for t in job.trajectories)
    assert job.usage.total_tokens == trajectories + estimate_tokens(report_pass.messages, report_pass.tools)


async def test_a_finish_before_the_aggregation_or_the_services_leaves_the_report_pass_to_run():
    # asked for while the trajectories ran (Ctrl-C, or the API's, which a worker polls): they stop, and the report
    # pass still writes the findings of what they found
    control = JobControl()
    backend = ScriptedBackend(researcher(), delay_s=lambda r: 30 if r.trajectory == 2 else 0)
    task = asyncio.create_task(run(spec(mode="report", trajectories=3), backend, control))
    while sum(r.trajectory in (0, 1) for r in backend.requests) < 4:
        await asyncio.sleep(0.01)
    control.finish_now(aggregation_too=True)
    job, _ = await task
    assert job.stop_reason == "finish_now" and job.report_error == "" and "## Findings" in job.markdown
    assert "report" in [r.request_id for r in backend.requests] and "report" not in backend.cancelled
    # the service's finish, seen by the worker's poll once the aggregation began (or by a worker resuming the job)
    control, gate = JobControl(), asyncio.Event()
    backend = ScriptedBackend(researcher(), aggregator_gate=gate)
    task = asyncio.create_task(run(spec(mode="report", trajectories=3), backend, control))
    while not [r for r in backend.requests if r.request_id == "report"]:
        await asyncio.sleep(0.01)
    control.finish_now()
    for _ in range(10):  # the loop turns a stop would need to abort the pass before it is let through
        await asyncio.sleep(0)
    gate.set()
    job, _ = await task
    assert job.status == "done" and job.report_error == "" and not backend.cancelled


async def test_with_the_endpoint_down_the_answer_list_does_not_say_the_model_weighed_the_answers():
    def down(request):
        raise RetriableLLMError("giving up after 5 attempts: ConnectError: [Errno 111] Connection refused")

    results = [result(0, "The tower was finished in 1889 for a fair.", cited=[TOWER]),
               result(1, "The Eiffel Tower is a landmark finished in 1889.", cited=[TOWER])]
    job = await aggregate(job_id="j", question=QUESTION, mode="report", results=results, backend=ScriptedBackend(down))
    assert "its words are on [1]" in job.markdown
    assert "checked as the findings are: by words, not meaning" in job.markdown
    assert "weighing" not in job.markdown and "Connection refused" in job.report_error
    # with the model answering, the same list says it weighed them
    answering = await aggregate(job_id="j", question=QUESTION, mode="report", results=results,
                                backend=ScriptedBackend(lambda request: text("Yes")))
    assert "then by the model weighing each sentence" in answering.markdown
