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
