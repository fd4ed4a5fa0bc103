"""The report's sentences: what one claim is, a claim said twice, a sentence the token limit cut."""

import pytest

from heavy.agent.steps import TrajectoryResult, finished_part
from heavy.aggregate import aggregate
from heavy.aggregate.citations import filter_claims
from heavy.aggregate.evidence import SENTENCE_END
from heavy.llm.types import Completion, Usage
from tests.heavy.fakes import ScriptedBackend, source

EXCEPTIONS = source("http://corpus/exceptions", "Exception handlers are specified with the 'try' ... 'except' "
                    "statement. The 'finally' clause runs whether an exception occurred or not.")


def test_an_ellipsis_inside_a_sentence_does_not_end_it():
    assert SENTENCE_END.split("Handlers use the 'try' ... 'except' statement. Then 'finally' runs.") == [
        "Handlers use the 'try' ... 'except' statement.", "Then 'finally' runs."]


def test_a_claim_the_model_repeats_is_kept_once():
    # seen in the demo's report: the same two sentences three times over
    said = ("Exception handlers are specified with the 'try' ... 'except' statement [1]. "
            "The 'finally' clause runs whether an exception occurred or not [1]. ")
    unmarked = "\n- Exception handlers are specified with the 'try' ... 'except' statement."  # attributed to [1]
    filtered = filter_claims(said * 2 + unmarked, [EXCEPTIONS],
                             {EXCEPTIONS.url: EXCEPTIONS.snippet})
    assert filtered.body == said.strip()
    assert filtered.cited == (1,) and filtered.dropped == ()


def test_a_sentence_carrying_the_findings_lists_annotation_is_an_echo_not_a_claim():
    # seen in the demo's report: a trajectory's answer copied from the prompt with its annotation
    body = ("The 'finally' clause runs whether an exception occurred or not (confidence 0.3), citing no source [1]. "
            "Exception handlers are specified with the 'try' ... 'except' statement [1].")
    filtered = filter_claims(body, [EXCEPTIONS], {EXCEPTIONS.url: EXCEPTIONS.snippet})
    assert filtered.body == "Exception handlers are specified with the 'try' ... 'except' statement [1]."
    assert len(filtered.dropped) == 1


def test_the_finished_part_ends_at_the_last_full_stop_with_its_markers():
    assert finished_part("It ends the loop [1]. The else clause of a loop [1]") == "It ends the loop [1]."
    assert finished_part("It ends the loop. [1] Then the") == "It ends the loop. [1]"
    assert finished_part("No end at all [1]") == ""


@pytest.mark.anyio
async def test_a_report_pass_cut_by_its_token_limit_loses_its_unfinished_sentence():
    # seen in the demo's report: "… no except [2]. The else clause of a loop [1]" at the 384-token limit
    cut = "Exception handlers are specified with the 'try' ... 'except' statement [1]. The 'finally' clause [1]"
    backend = ScriptedBackend(lambda request: Completion(content=cut, finish_reason="length", usage=Usage(50, 384)))
    results = [TrajectoryResult(index=0, answer="try", confidence=0.5, stop_reason="answered", cited=(EXCEPTIONS,),
                                evidence=(EXCEPTIONS,), steps=(), usage=Usage(100, 10), temperature=0.0, seed=0,
                                excerpts={EXCEPTIONS.url: EXCEPTIONS.snippet})]
    job = await aggregate(job_id="j", question="How are exceptions handled?", mode="report", results=results,
                          backend=backend)
    assert "specified with the 'try' ... 'except' statement [1]." in job.markdown
    assert "The 'finally' clause [1]" not in job.markdown and job.dropped_claims == ()


def test_a_lead_into_a_list_stands_only_with_an_item_after_it():
    # seen in `heavy ask`: the items were dropped, and "The methods that must a context manager define are: [1]"
    # stood alone as the report's only finding
    page = source("http://corpus/with", "A context manager defines __enter__ and __exit__. The with statement "
                                        "calls __enter__ on entry and __exit__ on exit.")
    texts = {page.url: page.snippet}
    lead = "The methods that a context manager defines are: [1]"
    item = "- The with statement calls __enter__ on entry and __exit__ on exit [1]."
    unsupported = "- `__enter__`: called on entry, allowing any necessary setup of resources and logging [1]."
    alone = filter_claims(f"{lead}\n{unsupported}", [page], texts)
    assert alone.body == "" and alone.cited == () and alone.dropped[-1] == lead
    with_item = filter_claims(f"{lead}\n{item}", [page], texts)
    assert with_item.body == f"{lead}\n{item}" and with_item.cited == (1,)
    after_a_claim = filter_claims(f"A context manager defines __enter__ and __exit__ [1]. {lead}", [page], texts)
    assert after_a_claim.body == "A context manager defines __enter__ and __exit__ [1]."
