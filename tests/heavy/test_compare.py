"""Answer mode's opt-in comparison: the candidates with the most ballots compared two at a time on the judge's pages,
both orders, scored by each letter's share of the first token; the one winning the most comparisons decides."""

import math

import pytest

from heavy.aggregate import AggregationConfig, aggregate
from heavy.aggregate.compare import compare, first_share
from heavy.aggregate.evidence import Passage
from heavy.llm.types import Completion, LLMError, Sampling, Usage
from tests.heavy.fakes import ScriptedBackend, source, text
from tests.heavy.test_aggregate import result

pytestmark = pytest.mark.anyio

PAGES = [Passage("http://corpus/eiffel", "Eiffel Tower", "The Eiffel Tower was finished in 1889.", 1.0)]
QUESTION = "When was the Eiffel Tower finished?"


def _proposed(prompt: str) -> tuple[str, str]:
    return prompt.split("A) ")[1].split("\n")[0], prompt.split("B) ")[1].split("\n")[0]


def leaning(right: str, first_bias: float = 0.6):
    """A judge that leans to the answer it reads first (P(A) = first_bias) and to `right` more: P(A) + 0.3 when A
    is `right`, - 0.3 when B is."""

    def reply(request):
        first, second = _proposed(request.messages[0]["content"])
        p_a = first_bias + (0.3 if first == right else -0.3 if second == right else 0.0)
        alternatives = ((("A", math.log(p_a)), ("B", math.log(1 - p_a))),) if request.sampling.top_logprobs else ()
        return Completion("A", usage=Usage(50, 1), top_logprobs=alternatives)

    return reply


def test_the_share_of_the_first_letter_is_read_off_the_alternatives_else_the_greedy_letter():
    reply = Completion("A", top_logprobs=((("A", math.log(0.6)), (" B", math.log(0.2)), ("(", math.log(0.2))),))
    assert first_share(reply) == pytest.approx(0.75)
    assert first_share(Completion("B)")) == 0.0 and first_share(Completion("Neither")) is None


async def test_the_candidate_winning_most_comparisons_wins_though_read_second_and_with_fewer_ballots():
    backend = ScriptedBackend(leaning("1889"))
    chosen, usage = await compare(QUESTION, [("1887", 5), ("1889", 1), ("1901", 2)], PAGES, backend, Sampling(),
                                  prefix_key="job")
    assert chosen == "1889" and usage == Usage(300, 6)
    asked = sorted(_proposed(r.messages[0]["content"]) for r in backend.requests)
    assert len(asked) == 6 and len(set(asked)) == 6  # three pairs, each in both orders
    assert all(r.sampling.temperature == 0.0 and r.sampling.top_logprobs == 10 and r.prefix_key == "job"
               for r in backend.requests)


async def test_without_two_candidates_pages_or_any_reply_nothing_is_chosen():
    def failing(request):
        raise LLMError("503")

    async def chosen(candidates, pages):
        return (await compare(QUESTION, candidates, pages, ScriptedBackend(failing), Sampling(), None))[0]

    assert await chosen([("1889", 3)], PAGES) is None
    assert await chosen([("1889", 3), ("1887", 1)], []) is None
    assert await chosen([("1889", 3), ("1887", 1)], PAGES) is None  # every call failed


async def test_with_compare_answers_the_comparison_overrules_a_majority():
    eiffel = source("http://corpus/eiffel", "The Eiffel Tower was finished in 1889.")
    judge = leaning("1889")

    def script(request):
        prompt = request.messages[0]["content"]
        return judge(request) if "Two proposed answers" in prompt else text("1887")  # the readings: wrong too

    results = [result(0, "1887", evidence=[eiffel]), result(1, "1887", evidence=[eiffel]),
               result(2, "1889", evidence=[eiffel])]
    plain = await aggregate(job_id="j", question=QUESTION, mode="answer", results=results,
                            backend=ScriptedBackend(script))
    backend = ScriptedBackend(script)
    compared = await aggregate(job_id="j", question=QUESTION, mode="answer", results=results, backend=backend,
                               config=AggregationConfig(compare_answers=True))
    assert plain.answer == "1887"
    assert compared.answer == "1889"
    assert sorted(r.request_id for r in backend.requests if r.request_id.startswith("compare")) == [
        "compare:0:1", "compare:1:0"]


async def test_a_lone_trajectory_is_not_compared():
    backend = ScriptedBackend(lambda request: text("1889"))
    eiffel = source("http://corpus/eiffel", "The Eiffel Tower was finished in 1889.")
    await aggregate(job_id="j", question=QUESTION, mode="answer", results=[result(0, "1887", evidence=[eiffel])],
                    backend=backend, config=AggregationConfig(compare_answers=True))
    assert not any(r.request_id.startswith("compare") for r in backend.requests)
