"""The model check of a report's claims: each claim the word check kept is put to the model with the passage of its
cited page that holds its words, and weighed against its negation where the backend gives log-probabilities (else a
greedy "no" takes it out); an unclear reply or a failure leaves it."""

import pytest

from heavy.aggregate import AggregationConfig, aggregate
from heavy.aggregate.claim_check import check_claims, negated, negations, passage_for, supports, yes_share
from heavy.llm.types import Completion, LLMError, Usage
from tests.heavy.fakes import ScriptedBackend, source, text
from tests.heavy.test_aggregate import result

pytestmark = pytest.mark.anyio

LOOPS = source("http://corpus/loops", "Loops repeat a suite. A break statement terminates the loop without executing "
               "the else clause. A continue statement skips the rest of the suite and continues with the next item, "
               "or with the else clause if there is no next item. Loops may nest. Nested loops end one by one.")
TOWER = source("http://corpus/tower", "The Eiffel Tower was finished in 1889. It is in Paris.")
TEXTS = {LOOPS.url: LOOPS.snippet, TOWER.url: TOWER.snippet}
WRONG = "A continue statement skips the else clause"


def _judge(request):
    """No to the wrong claim about continue, yes to the rest."""
    prompt = request.messages[0]["content"]
    return text("No." if f"Claim: {WRONG}" in prompt else "Yes, it does.", usage=Usage(80, 1))


def test_the_passage_is_the_run_of_sentences_holding_most_of_the_claims_words():
    passage = passage_for("The tower was finished in 1889", [LOOPS.snippet, TOWER.snippet])
    assert passage == "The Eiffel Tower was finished in 1889. It is in Paris."
    assert "continue statement skips" in passage_for(WRONG, [LOOPS.snippet, TOWER.snippet])


async def test_a_refuted_claim_is_taken_out_and_its_lines_other_claims_stay():
    body = (f"## Loops\n\nA break statement ends the loop without the else clause [1]. {WRONG} [1].\n"
            f"- {WRONG} [1].\n- The tower was finished in 1889 [2].")
    backend = ScriptedBackend(_judge)
    checked = await check_claims(body, [LOOPS, TOWER], TEXTS, backend, prefix_key="job")
    assert checked.body == ("## Loops\n\nA break statement ends the loop without the else clause [1].\n"
                            "- The tower was finished in 1889 [2].")
    assert checked.refuted == (f"{WRONG} [1].", f"{WRONG} [1].")
    assert len(backend.requests) == 4 and checked.usage == Usage(320, 4)
    assert all(r.prefix_key == "job" and r.sampling.temperature == 0.0 and r.tools is None for r in backend.requests)
    tower = next(r.messages[0]["content"] for r in backend.requests if "tower" in r.messages[0]["content"])
    assert tower.startswith("Passage: The Eiffel Tower was finished in 1889.") and "break" not in tower


async def test_a_heading_whose_every_claim_is_refuted_goes_with_them():
    body = (f"## Continue\n\n{WRONG} [1].\n\n## Tower\n\n- The tower was finished in 1889 [2].\n"
            f"### More on continue\n- {WRONG} [1].")
    checked = await check_claims(body, [LOOPS, TOWER], TEXTS, ScriptedBackend(_judge))
    assert checked.body == "## Tower\n\n- The tower was finished in 1889 [2]."


@pytest.mark.parametrize("reply", ["maybe", "", LLMError("engine gone")])
async def test_a_check_that_says_neither_yes_nor_no_or_fails_leaves_the_claim(reply):
    def script(request):
        if isinstance(reply, Exception):
            raise reply
        return text(reply)

    body = f"{WRONG} [1]."
    checked = await check_claims(body, [LOOPS], TEXTS, ScriptedBackend(script))
    assert (checked.body, checked.refuted) == (body, ())


async def test_a_sentence_of_its_page_word_for_word_is_not_put_to_the_model():
    # the 0.5B refuted 10 of 40 pages' sentences as written; the report pass copies sentences of its sources
    backend = ScriptedBackend(lambda request: text("No."))
    copied = "A “break” statement terminates the loop without executing the else clause [1]."  # its quotes aside
    checked = await check_claims(copied, [LOOPS], TEXTS, backend)
    assert checked.body == copied and backend.requests == []
    seen_in_results = source("http://corpus/results", "[1] Loops\nURL: http://corpus/loops\nA break statement "
                             "terminates the loop without executing the else clause.\n\nLoops may nest.")
    snippet = "A break statement terminates the loop without executing the else clause [1]."
    assert (await check_claims(snippet, [seen_in_results], {seen_in_results.url: seen_in_results.snippet},
                               backend)).body == snippet and backend.requests == []  # its header aside
    part = "A break statement terminates the loop [1]."  # a run of a sentence, not the sentence: asked
    assert (await check_claims(part, [LOOPS], TEXTS, backend)).refuted == (part,) and backend.requests


async def test_a_claim_citing_no_fetched_text_is_not_put_to_the_model():
    backend = ScriptedBackend(_judge)
    checked = await check_claims("The tower was finished in 1889 [2].", [LOOPS, TOWER], {}, backend)
    assert checked.body == "The tower was finished in 1889 [2]." and backend.requests == []


async def test_a_report_with_the_check_on_lists_the_refuted_claim_as_dropped_and_cites_only_what_stays():
    written = f"A break statement ends the loop without running the else clause [1]. {WRONG} [2]."
    requests_of = {}

    async def run(check: bool):
        backend = ScriptedBackend(lambda r: text(written) if r.request_id == "report" else _judge(r))
        job = await aggregate(job_id="j", question="What do break and continue do to a loop's else clause?",
                              mode="report", results=[result(0, "break skips it", cited=[LOOPS]),
                                                      result(1, "continue skips it", cited=[TOWER, LOOPS])],
                              backend=backend, config=AggregationConfig(check_claims=check))
        requests_of[check] = [r.request_id for r in backend.requests]
        return job

    checked, unchecked = await run(True), await run(False)
    assert WRONG not in checked.markdown.split("## What each trajectory answered")[0]
    assert any(WRONG in claim for claim in checked.dropped_claims)
    assert checked.refuted_claims == (f"{WRONG} [1].",) and checked.to_dict()["refuted_claims"] == [f"{WRONG} [1]."]
    assert unchecked.refuted_claims == ()
    assert "A break statement ends the loop without running the else clause [1]." in checked.markdown
    assert "claim-check:0" in requests_of[True] and not any("claim" in r for r in requests_of[False])
    assert WRONG in unchecked.markdown.split("## What each trajectory answered")[0]  # the word check keeps it
    assert checked.usage.total_tokens > unchecked.usage.total_tokens


async def test_the_answer_list_says_which_answer_sentences_the_check_refuted_and_the_report_pass_sees_none():
    right = "A break statement ends the loop without running the else clause."
    backend = ScriptedBackend(lambda r: text("A break statement ends the loop [1].") if r.request_id == "report"
                              else _judge(r))
    job = await aggregate(job_id="j", question="What do break and continue do to a loop's else clause?",
                          mode="report", results=[result(0, f"{WRONG}.", cited=[LOOPS]),
                                                  result(1, f"{right} {WRONG}.", cited=[LOOPS])], backend=backend)
    listed = job.markdown.split("## What each trajectory answered")[1].split("## Sources")[0]
    assert (f'“{WRONG}.”: trajectory 1 — its words are on [1], but the model\'s check found that page does not '
            "support it") in listed
    assert ("trajectory 2 — 1 of its 2 sentences is on [1] (1 more by its words on [1], which the model's check "
            "found does not support it)") in listed
    assert "against its negation and with its numbers or names swapped" in listed
    report = next(r for r in backend.requests if r.request_id == "report").messages[0]["content"]
    # an answer whose every sentence was refuted is not shown to the report pass; one with a sentence left is, whole
    assert "Researcher 1 gave an answer that no source text holds." in report and f"answered: {right}" in report
    # one request per sentence of each answer (answers in the vote's order: trajectory 2's first), then the report
    assert [r.request_id for r in backend.requests] == ["answer-check:0:0", "answer-check:0:1", "answer-check:1:0",
                                                         "report"]
    assert [s.url for s in job.sources] == [LOOPS.url]


@pytest.mark.parametrize(("claim", "negation"), [
    ("The tower was finished in 1889.", "The tower was not finished in 1889."),
    ("Break and continue do not skip the else clause.", "Break and continue do skip the else clause."),
    ("Its else clause doesn\u2019t run.", "Its else clause does run."),
    ("Isn't it in Paris?", "Is it in Paris?"),
    ("It cannot be nested.", "It can be nested."),
    ("A continue statement skips the rest of the suite.", "It is not true that a continue statement skips the rest "
                                                          "of the suite."),  # no auxiliary verb to flip
    ("Gustave Eiffel built it.", "It is not true that Gustave Eiffel built it."),
    ("When it ends, it terminates the loop.", "It is not true that when it ends, it terminates the loop."),
    ("Once built, the tower was 300 m tall.", "Once built, the tower was not 300 m tall."),  # one auxiliary
])
def test_a_claims_negation_flips_its_first_auxiliary_verb(claim, negation):
    assert negated(claim) == negation
    assert negations(claim) == (negation,)


@pytest.mark.parametrize(("claim", "main"), [
    # the demo's wrong finding at a1d7c74: its main clause is what is wrong
    ('If the break statement is executed in the first suite, the "else" clause, if present, is executed.',
     'If the break statement is executed in the first suite, the "else" clause, if present, is not executed.'),
    ("When a loop isn\u2019t exhausted, the else clause doesn't run.",
     "When a loop isn't exhausted, the else clause does run."),
])
def test_a_conditional_claim_is_also_negated_in_its_main_clause(claim, main):
    assert negations(claim) == (negated(claim), main)


def test_the_share_of_yes_is_read_off_the_first_tokens_alternatives():
    reply = Completion("No", top_logprobs=(((" No", -0.5), ("Yes", -1.0), ('"yes', -3.0), ("The", -2.0)),))
    assert yes_share(reply) == pytest.approx((0.368 + 0.050) / (0.368 + 0.050 + 0.607), abs=1e-3)
    assert yes_share(Completion("No")) is None
    assert yes_share(Completion("The", top_logprobs=((("The", -0.1),),))) is None
    thought = Completion("No", reasoning="Hmm.", top_logprobs=((("Yes", -0.1),),))
    assert yes_share(thought) is None  # the first token was the model's reasoning, not its reply


RIGHT = "The tower was finished in 1889"  # greedy "No", but more likely "yes" than its negation
BACKWARDS = "The else clause is executed when a break ends the loop"  # wrong: its negation is the likelier "yes"
SHARES = {RIGHT: (-1.0, -0.5), negated(RIGHT): (-1.6, -0.2), BACKWARDS: (-0.9, -0.5), negated(BACKWARDS): (-0.6, -0.8),
          WRONG: (-1.2, -0.4), negated(WRONG): (-0.7, -0.7)}


def _weighing_judge(request, shares=SHARES):
    """Greedy "No" to every claim, with log-probabilities of yes and no when they were asked for."""
    claim = request.messages[0]["content"].split("Claim: ")[1].split("\n")[0]
    yes, no = shares.get(claim, (-2.0, -0.2))
    alternatives = ((("No", no), ("Yes", yes)),) if request.sampling.top_logprobs else ()
    return Completion("No", usage=Usage(80, 1), top_logprobs=alternatives)


@pytest.mark.parametrize(("claim", "kept"), [(RIGHT, True), (BACKWARDS, False), (WRONG, False)])
async def test_a_claim_is_weighed_against_its_negation_not_by_the_greedy_no(claim, kept):
    backend = ScriptedBackend(_weighing_judge)
    said, usage = await supports(backend, "A passage.", claim, request_id="claim-check:3")
    assert said is kept and usage == Usage(160, 2)
    assert [r.request_id for r in backend.requests] == ["claim-check:3", "claim-check:3:negated"]
    assert backend.requests[1].messages[0]["content"].endswith(f"Claim: {negated(claim)}\n\nDoes the passage "
                                                                "support the claim? Answer yes or no.")
    assert all(r.sampling.top_logprobs == 5 and r.sampling.temperature == 0.0 for r in backend.requests)


CONDITIONAL = "If the loop is ended by a break, the else clause is executed"  # wrong in its main clause
FIRST_FLIPPED, MAIN_FLIPPED = negations(CONDITIONAL)


@pytest.mark.parametrize(("main_share", "kept"), [((-0.3, -1.5), False), ((-2.0, -0.2), True)])
async def test_a_conditional_claim_is_refuted_when_either_negation_is_the_better_supported(main_share, kept):
    shares = {CONDITIONAL: (-0.9, -0.5), FIRST_FLIPPED: (-1.2, -0.4), MAIN_FLIPPED: main_share}
    backend = ScriptedBackend(lambda r: _weighing_judge(r, shares))
    said, usage = await supports(backend, "A passage.", CONDITIONAL, request_id="claim-check:0")
    assert said is kept and usage == Usage(240, 3)
    assert [r.request_id for r in backend.requests] == ["claim-check:0", "claim-check:0:negated",
                                                        "claim-check:0:negated:1"]
    assert MAIN_FLIPPED in backend.requests[2].messages[0]["content"]


async def test_a_server_refusing_log_probabilities_gets_the_greedy_check():
    def refusing(request):
        if request.sampling.top_logprobs:
            raise LLMError("400: logprobs are not supported")
        return Completion("No.")

    backend = ScriptedBackend(refusing)
    assert (await supports(backend, "A passage.", RIGHT))[0] is False
    assert [r.sampling.top_logprobs for r in backend.requests] == [5, 0]


async def test_without_contrast_or_log_probabilities_only_the_greedy_reply_decides():
    assert (await supports(ScriptedBackend(_weighing_judge), "A passage.", RIGHT, contrast=False))[0] is False
    without = ScriptedBackend(lambda r: Completion("Yes."))  # a backend that gives no log-probabilities
    assert (await supports(without, "A passage.", BACKWARDS))[0] is True and len(without.requests) == 1


async def test_a_claim_with_a_number_its_passage_gives_to_something_else_loses_to_its_rival():
    passage = "The Eiffel Tower was begun in 1887 and finished in 1889."
    claim = "The Eiffel Tower was finished in 1887."
    rival = "The Eiffel Tower was finished in 1889."
    # its negation is less likely "yes" than the claim (no negation exposes it); the rival is likelier still
    shares = {claim: (-0.9, -0.5), negated(claim): (-1.5, -0.3), rival: (-0.3, -1.4)}
    backend = ScriptedBackend(lambda r: _weighing_judge(r, shares))
    said, usage = await supports(backend, passage, claim, request_id="claim-check:1")
    assert said is False and usage == Usage(240, 3)
    assert [r.request_id for r in backend.requests] == ["claim-check:1", "claim-check:1:negated",
                                                        "claim-check:1:rival:0"]
    assert rival in backend.requests[2].messages[0]["content"]
    right = ScriptedBackend(lambda r: _weighing_judge(r, {rival: (-0.3, -1.4), claim: (-0.9, -0.5)}))
    assert (await supports(right, passage, rival))[0] is True  # 1887 as its rival is the less likely
