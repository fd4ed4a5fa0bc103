"""The claim filter's sentences: what one claim is, and a claim said twice."""

from heavy.aggregate.citations import filter_claims
from heavy.aggregate.evidence import SENTENCE_END
from tests.heavy.fakes import source

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
