"""The aggregator's prompts fit the context less each call's completion (its max_tokens and the reasoning room): the
report pass, the judge, the shortening and the claim checks cut the source text they carry, never the question.
Without it, a report prompt carrying prompt_source_chars of sources overflowed a small context (a 400 on every
OpenAI-compatible server)."""

import dataclasses

import pytest

from heavy.agent import TrajectoryLimits
from heavy.agent.context import estimate_tokens
from heavy.aggregate import AggregationConfig, aggregate
from heavy.aggregate.claim_check import supports
from heavy.aggregate.evidence import Passage
from heavy.aggregate.fit import PromptRoom
from heavy.aggregate.judge import Judge
from heavy.aggregate.shorten import shorten_one
from heavy.llm.types import ContextLengthError, Sampling, Usage
from heavy.scheduler import Scheduler
from heavy.tools.base import ToolExecutor
from tests.heavy.fakes import DictSearch, ScriptedBackend, source, text
from tests.heavy.test_aggregate import result
from tests.heavy.test_scheduler import researcher, spec

pytestmark = pytest.mark.anyio

QUESTION = "When was the Eiffel Tower finished?"
SMALL = PromptRoom(context_tokens=600)
LONG_PAGE = "The Eiffel Tower was finished in 1889. " + "It is made of wrought iron and stands in Paris. " * 200


def fits(backend: ScriptedBackend, context: int) -> bool:
    """Every request's estimated prompt and its max_tokens fit `context`."""
    return all(estimate_tokens(r.messages) + r.max_tokens <= context for r in backend.requests)


async def test_the_report_prompt_carries_only_the_sources_the_context_leaves_room_for():
    pages = [source(f"http://corpus/eiffel{i}", f"The Eiffel Tower was finished in 1889, page {i}. " + LONG_PAGE)
             for i in range(6)]
    backend = ScriptedBackend(lambda request: text("The Eiffel Tower was finished in 1889 [1]."))
    config = AggregationConfig(context_tokens=1400, reasoning_tokens=100, check_claims=False)
    job = await aggregate(job_id="j", question=QUESTION, mode="report", backend=backend, config=config,
                          results=[result(i, "1889", cited=[page]) for i, page in enumerate(pages)])
    (report,) = [r for r in backend.requests if r.request_id == "report"]
    assert report.max_tokens == config.report_tokens + config.reasoning_tokens
    prompt = report.messages[0]["content"]
    assert QUESTION in prompt and "[1] eiffel0:" in prompt  # the most relevant source still shown
    assert "[6] eiffel5:" not in prompt  # six full excerpts would not fit
    assert fits(backend, config.context_tokens) and "1889 [1]" in job.markdown


async def test_the_judge_reads_passages_cut_to_the_context():
    backend = ScriptedBackend(lambda request: text("1889"))
    judge = Judge(QUESTION, backend, Sampling(), None, room=SMALL)
    passages = [Passage(url=f"http://corpus/{i}", title=f"page {i}", text=LONG_PAGE, score=1.0)
                for i in range(4)]
    assert await judge.answer(passages) == "1889"
    assert QUESTION in backend.requests[0].messages[0]["content"] and fits(backend, SMALL.context_tokens)


async def test_a_long_answer_is_shortened_from_a_prompt_that_fits():
    backend = ScriptedBackend(lambda request: text("1889"))
    cut, _ = await shorten_one(QUESTION, LONG_PAGE, backend, Sampling(), None, "shorten:0", room=SMALL)
    assert cut == "1889"
    assert QUESTION in backend.requests[0].messages[-1]["content"] and fits(backend, SMALL.context_tokens)


async def test_a_claim_is_checked_against_a_passage_cut_to_the_context():
    backend = ScriptedBackend(lambda request: text("Yes"))
    claim = "The Eiffel Tower was finished in 1889."
    assert (await supports(backend, LONG_PAGE, claim, room=SMALL))[0] is True
    assert all(claim in r.messages[0]["content"] for r in backend.requests) and fits(backend, SMALL.context_tokens)


async def test_over_text_the_estimate_undercounts_the_aggregators_prompts_fit_by_what_the_server_counted():
    """The trajectories' requests showed the server counting Chinese 1.9 times the estimate: the report pass and the
    claim checks are fitted by that too, instead of being refused as too long (their part of the report lost)."""
    context = 1500

    def server(request):  # refuses a prompt past its context as an engine does; a trajectory fits it again
        counted = int(1.9 * estimate_tokens(request.messages, request.tools))
        if counted + request.max_tokens > context:
            raise ContextLengthError(f"{counted} tokens", prompt_tokens=counted, room=None)
        reply = researcher(["巴黎"] * 2)(request)
        return dataclasses.replace(reply, usage=Usage(counted, 10))

    pages = {f"http://corpus/paris{i}": f"Paris is the capital of France ({i}). " + "巴黎是法国的首都。" * 150
             for i in range(4)}
    backend = ScriptedBackend(server)
    job = spec(mode="report", trajectories=2, limits=TrajectoryLimits(max_steps=3, step_tokens=100,
                                                                      context_tokens=context))
    scheduler = Scheduler(backend, ToolExecutor([DictSearch(pages)]), AggregationConfig(context_tokens=context))
    result = await scheduler.run(job)
    aggregator = [r for r in backend.requests if r.trajectory < 0]
    assert [r.request_id for r in aggregator][:1] == ["report"] and result.status == "done"
    assert all(int(1.9 * estimate_tokens(r.messages)) + r.max_tokens <= context for r in aggregator)
