"""The aggregator's prompts fit the context less each call's completion (its max_tokens and the reasoning room): the
report pass, the judge, the shortening and the claim checks cut the source text they carry, never the question.
Without it, a report prompt carrying prompt_source_chars of sources overflowed a small context (a 400 on every
OpenAI-compatible server)."""

import pytest

from heavy.agent.context import estimate_tokens
from heavy.aggregate import AggregationConfig, aggregate
from heavy.aggregate.claim_check import supports
from heavy.aggregate.evidence import Passage
from heavy.aggregate.fit import PromptRoom
from heavy.aggregate.judge import Judge
from heavy.aggregate.shorten import shorten_one
from heavy.llm.types import Sampling
from tests.heavy.fakes import ScriptedBackend, source, text
from tests.heavy.test_aggregate import result

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
