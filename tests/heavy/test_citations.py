"""The report's claims: what one claim is, a claim said twice, a sentence the token limit cut, lists, headings, and
the markers and links a kept claim holds. Which claims a fetched passage holds: test_citation_support.py."""

import pytest

from heavy.agent.steps import TrajectoryResult, finished_part
from heavy.aggregate import aggregate
from heavy.aggregate.citations import filter_claims
from heavy.aggregate.evidence import SENTENCE_END
from heavy.llm.types import Completion, Usage
from tests.heavy.fakes import ScriptedBackend, source

EIFFEL = source("http://corpus/eiffel", "The Eiffel Tower was finished in 1889.")
LOUVRE = source("http://corpus/louvre", "The Louvre pyramid was finished in 1989.")
EXCEPTIONS = source("http://corpus/exceptions", "Exception handlers are specified with the 'try' ... 'except' "
                    "statement. The 'finally' clause runs whether an exception occurred or not.")


def test_an_ellipsis_inside_a_sentence_does_not_end_it():
    assert SENTENCE_END.split("Handlers use the 'try' ... 'except' statement. Then 'finally' runs.") == [
        "Handlers use the 'try' ... 'except' statement.", "Then 'finally' runs."]


def test_an_initial_or_a_title_does_not_end_a_sentence():
    # seen in a HotpotQA report: a quote cut at "C." of "C. Robert Cargill"
    text = "It was written by Jon Spaihts and C. Robert Cargill for the U.S. market. Dr. Strange was a hit. It ran."
    assert SENTENCE_END.split(text) == [
        "It was written by Jon Spaihts and C. Robert Cargill for the U.S. market.", "Dr. Strange was a hit.", "It ran."]
    # seen in a HotpotQA report: a finding cut at "No." of "reached No. 1", both halves then refuted by the check
    assert SENTENCE_END.split("It charted in 1966 and reached No. 1 in the UK. Vol. 2 followed.") == [
        "It charted in 1966 and reached No. 1 in the UK.", "Vol. 2 followed."]


def test_citation_marks_alone_are_no_claim():
    # seen in a HotpotQA report: findings that began "[1][1][1]. He worked at ..."
    said = "The 'finally' clause runs whether an exception occurred or not [1]."
    filtered = filter_claims(f"[1][1][1]. {said}", [EXCEPTIONS], {EXCEPTIONS.url: EXCEPTIONS.snippet})
    assert (filtered.body, filtered.dropped) == (said, ())  # nor a dropped claim to list (seen: "[1][2][3][4].")


def test_a_claim_the_model_repeats_is_kept_once():
    # seen in the demo's report: the same two sentences three times over
    said = ("Exception handlers are specified with the 'try' ... 'except' statement [1]. "
            "The 'finally' clause runs whether an exception occurred or not [1]. ")
    unmarked = "\n- Exception handlers are specified with the 'try' ... 'except' statement."  # attributed to [1]
    filtered = filter_claims(said * 2 + unmarked, [EXCEPTIONS],
                             {EXCEPTIONS.url: EXCEPTIONS.snippet})
    assert filtered.body == said.strip()
    assert filtered.cited == (1,) and filtered.dropped == ()
    # seen in `heavy ask`: a third sentence joining the two before it, word for word
    joined = ("Exception handlers are specified with the 'try' ... 'except' statement, and the 'finally' clause runs "
              "whether an exception occurred or not [1].")
    assert filter_claims(f"{said}{joined}", [EXCEPTIONS], {EXCEPTIONS.url: EXCEPTIONS.snippet}).body == said.strip()
    # seen in `heavy ask`: one unsupported sentence written 17 times was listed 17 times among the dropped claims
    looped = filter_claims("Astronauts built the tower on the moon [1]. " * 3, [EXCEPTIONS],
                           {EXCEPTIONS.url: EXCEPTIONS.snippet})
    assert looped.body == "" and looped.dropped == ("Astronauts built the tower on the moon [1].",)


def test_an_answer_echoed_with_the_findings_lists_annotation_loses_it_and_is_checked_as_a_claim():
    # seen in the demos' reports: a trajectory's answer copied from the prompt with its annotation
    body = ("The 'finally' clause runs whether an exception occurred or not (confidence 0.3), citing no source. "
            "Exception handlers are specified with the 'try' statement (confidence 0.5), citing [1], [2]. "
            "Astronauts built the tower on the moon (confidence 0.9), citing no source.")
    filtered = filter_claims(body, [EXCEPTIONS], {EXCEPTIONS.url: EXCEPTIONS.snippet})
    assert filtered.body == ("The 'finally' clause runs whether an exception occurred or not [1]. "
                             "Exception handlers are specified with the 'try' statement [1].")
    assert filtered.dropped == ("Astronauts built the tower on the moon.",)


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
    under_heading = filter_claims(f"## Methods:\n{item[2:]}", [page], texts)  # a heading is no lead-in
    assert under_heading.body == f"## Methods:\n{item[2:]}" and under_heading.dropped == ()


def test_numbered_findings_become_bullets():
    # seen in the demo: item 1 dropped, "2. The break statement ..." stayed under a line of text, one paragraph
    page = source("http://corpus/break", "The break statement terminates the nearest enclosing loop. It skips the "
                                         "else clause of the loop.")
    body = "The break statement terminates the nearest enclosing loop [1].\n2. It skips the else clause [1]."
    assert filter_claims(body, [page], {page.url: page.snippet}).body == (
        "The break statement terminates the nearest enclosing loop [1].\n- It skips the else clause [1].")


def test_a_copied_source_list_and_restated_question_are_not_claims():
    body = ("## Question: When was it finished?\n### Sources:\n1. [1] eiffel — http://corpus/eiffel\n"
            "The tower was finished in 1889 [1]. See http://corpus/eiffel for more [1].")
    filtered = filter_claims(body, [EIFFEL, LOUVRE])
    assert filtered.body == "The tower was finished in 1889 [1]."
    assert filtered.dropped == ("[1] eiffel — http://corpus/eiffel", "See http://corpus/eiffel for more [1].")
    echoed = filter_claims("Researcher 2 answered that it was finished in 1889 [1]. It was finished in 1889 [1].",
                           [EIFFEL])
    assert echoed.body == "It was finished in 1889 [1]."  # the findings list echoed back is not a claim


def test_a_heading_left_with_nothing_under_it_goes():
    # seen in the demo: "### Independent Researchers' Answers", the prompt's list announced and nothing under it,
    # and a section whose every claim was dropped
    body = ("### Dates\nThe tower was finished in 1889 [1].\n### Independent Researchers' Answers\n"
            "### Pyramids\nThe pyramid was built by aliens [1].\n\n"
            "## Also\nThe Louvre pyramid was finished in 1989 [2].")
    filtered = filter_claims(body, [EIFFEL, LOUVRE], {s.url: s.snippet for s in (EIFFEL, LOUVRE)})
    assert filtered.body == ("### Dates\nThe tower was finished in 1889 [1].\n\n"
                             "## Also\nThe Louvre pyramid was finished in 1989 [2].")


def test_a_copied_entry_of_the_prompts_source_list_is_no_claim():
    # seen with the 1.5B model: "- [1] Dwyer Arena: The main rink can seat up to 1,400 people ..."
    body = ("- [1] eiffel: The Eiffel Tower was finished in 1889.\n- [2] louvre: The Louvre pyramid was finished in "
            "1989.\n- [1] Its finish: the tower was finished in 1889 [1].")
    filtered = filter_claims(body, [EIFFEL, LOUVRE], {EIFFEL.url: EIFFEL.snippet, LOUVRE.url: LOUVRE.snippet})
    assert filtered.dropped == ("- [1] eiffel: The Eiffel Tower was finished in 1889.",
                                "- [2] louvre: The Louvre pyramid was finished in 1989.")
    assert filtered.body == "- [1] Its finish: the tower was finished in 1889 [1]."  # not source 1's title


def test_a_heading_keeps_no_citation_or_link_the_filter_did_not_check():
    # headings passed through as written: "[7]" of 2 sources crashed the report's Sources list (IndexError), "[0]"
    # listed the last source, and a link to a page no trajectory fetched stayed live
    texts = {EIFFEL.url: EIFFEL.snippet, LOUVRE.url: LOUVRE.snippet}
    claim = "The Eiffel Tower was finished in 1889 [1]."
    for heading in ("## The tower [7]", "## The tower [0]", "## The tower [2, 7]",
                    "## The [tower](http://evil.example/paint)", "## The [tower](//evil.example)"):
        filtered = filter_claims(f"{heading}\n\n{claim}", [EIFFEL, LOUVRE], texts)
        assert filtered.body == f"## The tower\n\n{claim}", heading
        assert filtered.cited == (1,), heading


@pytest.mark.anyio
async def test_a_marker_in_a_heading_of_the_report_pass_neither_crashes_nor_lists_a_source():
    results = [TrajectoryResult(index=0, answer="1889", confidence=0.5, stop_reason="answered", cited=(EIFFEL,),
                                evidence=(EIFFEL, LOUVRE), steps=(), usage=Usage(100, 10), temperature=0.0, seed=0,
                                excerpts={EIFFEL.url: EIFFEL.snippet, LOUVRE.url: LOUVRE.snippet})]
    for marker in ("[7]", "[0]"):
        written = f"## The tower {marker}\n\nThe Eiffel Tower was finished in 1889 [1]."
        backend = ScriptedBackend(lambda request, written=written: Completion(content=written, usage=Usage(50, 20)))
        job = await aggregate(job_id="j", question="When was the Eiffel Tower finished?", mode="report",
                              results=results, backend=backend)
        assert [s.url for s in job.sources] == [EIFFEL.url], marker
        assert "## The tower\n" in job.markdown and "[2]" not in job.markdown, marker


def test_a_range_or_full_width_marker_is_read_as_the_markers_it_stands_for():
    # "[1-2]" and "【1】" were no markers: a kept claim carried them as text, numbered over the union, never renumbered
    tower = source("http://corpus/tower", "The Eiffel Tower was finished in 1889 for the World's Fair.")
    texts = {EIFFEL.url: EIFFEL.snippet, tower.url: tower.snippet}
    for written, cited in (("[1-2]", "[1][2]"), ("[1–2]", "[1][2]"), ("【2】", "[2]"), ("[2-9]", "[2]"),
                           ("【1, 2】", "[1][2]")):
        filtered = filter_claims(f"The Eiffel Tower was finished in 1889 {written}.", [EIFFEL, tower], texts)
        assert filtered.body == f"The Eiffel Tower was finished in 1889 {cited}.", written


def test_a_kept_claim_holds_no_link_the_filter_did_not_check():
    # only "[text](http://...)" without a title was read as a link: one with a title, with a marker in its text, or
    # to another scheme stayed live beside the claim's valid marker (seen in a property test of the report)
    texts = {EIFFEL.url: EIFFEL.snippet}
    claim = "The Eiffel Tower was finished in 1889"
    for link, kept in (('[in 1889](http://evil.example "t")', "in 1889"), ("[in 1889 [1]](http://evil.example)",
                       "in 1889 [1]"), ("[in 1889](javascript:alert(1))", "in 1889"),
                       ("[in 1889](//evil.example)", "in 1889"),
                       ('[in 1889](http://corpus/eiffel "t")', "in 1889")):
        filtered = filter_claims(f"The Eiffel Tower was finished {link} [1].", [EIFFEL], texts)
        assert filtered.body == f"The Eiffel Tower was finished {kept} [1].", link
    for address in ("<ftp://evil.example>", "[in 1889](<http://evil.example/a b>)"):  # read as a copied URL
        written = f"{claim} {address} [1]."
        assert filter_claims(written, [EIFFEL], texts).dropped == (written,), address


def test_code_is_no_claim_and_its_brackets_are_no_markers():
    # a fenced block lost its fences and each line became a claim, "print(a[1])" citing source 1 (renumbered inside
    # the code); an inline "`a[1]`" cited source 1 where the HTML shows no citation
    texts = {EIFFEL.url: EIFFEL.snippet, LOUVRE.url: LOUVRE.snippet}
    claim = "The Eiffel Tower was finished in 1889 [1]."
    fenced = filter_claims(f"{claim}\n\n```python\nprint(a[2])\n```", [EIFFEL, LOUVRE], texts)
    assert (fenced.body, fenced.cited) == (claim, (1,)) and "print(a[2])" in fenced.dropped
    inline = filter_claims(f"{claim} Then `a[2]` is read.", [EIFFEL, LOUVRE], texts)
    assert (inline.body, inline.cited) == (claim, (1,))
