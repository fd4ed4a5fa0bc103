"""The report's claims: what one claim is, a claim said twice, a sentence the token limit cut, and the filter
that keeps only the claims a fetched passage holds."""

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


def test_a_claim_matches_the_words_of_a_page_opened_as_escaped_markdown():
    # open_page's trafilatura writes "__enter__" as "\_\_enter\_\_": the claim's word was on no passage, so dropped
    page = source("http://corpus/with", "x")
    opened = "The with statement calls \\_\\_enter\\_\\_ on entry and \\_\\_exit\\_\\_ on exit."
    claim = "`__enter__` and `__exit__` are called [1]."
    kept = filter_claims(claim, [page], {page.url: opened})
    assert kept.body == claim and kept.dropped == ()


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


def test_claims_citing_pages_never_fetched_are_dropped():
    body = (
        "The tower was finished in 1889 [1]. It is made of cheese [7].\n"
        "- The pyramid dates from 1989 ([the Louvre](http://corpus/louvre)).\n"
        "- It was built by aliens ([blog](http://evil.example/aliens)).\n"
        "Everyone agrees on this.\n"
        "## Notes\n"
        "Both dates are well documented [1][2]."
    )
    filtered = filter_claims(body, [EIFFEL, LOUVRE])
    assert filtered.body.splitlines() == [
        "The tower was finished in 1889 [1].",
        "- The pyramid dates from 1989 (the Louvre [2]).",
        "## Notes",
        "Both dates are well documented [1][2].",
    ]
    assert filtered.dropped == (  # as the model wrote them, for the JSON result
        "It is made of cheese [7].", "It was built by aliens ([blog](http://evil.example/aliens)).",
        "Everyone agrees on this.",
    )
    assert filtered.cited == (1, 2)


def test_an_uncited_sentence_is_attributed_to_the_fetched_page_holding_its_words():
    body = "The Eiffel Tower was finished in 1889. The Louvre pyramid was finished in 1989. Cheese is made on Mars."
    texts = {EIFFEL.url: EIFFEL.snippet, LOUVRE.url: LOUVRE.snippet}
    filtered = filter_claims(body, [EIFFEL, LOUVRE], texts)
    assert filtered.body == "The Eiffel Tower was finished in 1889 [1]. The Louvre pyramid was finished in 1989 [2]."
    assert filtered.dropped == ("Cheese is made on Mars.",) and filtered.cited == (1, 2)
    assert filter_claims(body, [EIFFEL, LOUVRE]).body == ""  # without the texts nothing is attributed


def test_a_marker_on_a_page_that_does_not_hold_the_claim_is_not_trusted():
    loops = source("http://corpus/loops", "A break statement ends the loop; the else clause is then skipped.")
    texts = {loops.url: loops.snippet, LOUVRE.url: LOUVRE.snippet}
    body = "The tower was finished in 1889 [1]. A break statement skips the else clause of the loop [2]. It ends [1]."
    filtered = filter_claims(body, [loops, LOUVRE], texts)
    assert filtered.body == "A break statement skips the else clause of the loop [1]. It ends [1]."
    assert filtered.dropped == ("The tower was finished in 1889 [1].",)


def test_a_claim_joining_two_things_stands_only_on_pages_naming_both():
    # seen in the demo: the break statement's page held every word of this claim but "continue", a word of the question
    brk = source("http://corpus/break", "It terminates the nearest enclosing loop, skipping the optional else clause "
                                        "if the loop has one. Break may only occur in a for or while loop.")
    cont = source("http://corpus/continue", "Continue goes on with the next cycle of the nearest enclosing loop.")
    texts = {brk.url: brk.snippet, cont.url: cont.snippet}
    question = "What do the break and continue statements do inside a loop?"
    joined = "The break and continue statements terminate the nearest enclosing loop, skipping the else clause [1]."
    assert filter_claims(joined, [brk, cont], texts, question).dropped == (joined,)
    assert filter_claims(joined.replace(" [1]", ""), [brk, cont], texts, question).body == ""  # attributed to none
    alone = "The break statement terminates the nearest enclosing loop, skipping the else clause [1]."
    assert filter_claims(alone, [brk, cont], texts, question).body == alone
    # two joined names on two cited pages stand; so do joined verbs ("terminates ... and skips") that a page holds
    both = "Break and continue both act on the nearest enclosing loop [1][2]."
    assert filter_claims(both, [brk, cont], texts, question).body == both
    verbs = "Break terminates the nearest enclosing loop and skips the else clause [1]."
    assert filter_claims(verbs, [brk, cont], texts, question).body == verbs


def test_a_claim_made_of_the_questions_words_stands_only_on_a_page_holding_what_it_adds():
    # seen in the demo: a wrong answer echoed into the report, kept because the loops page holds the question's words
    # ("... do not affect the else clause ..."; here "reset" stands for "do not affect", whose "not" alone drops it)
    loops = source("http://corpus/loops", "A break statement ends the loop and the else clause of the loop is skipped; "
                                          "continue goes on with the next cycle.")
    question = "How do break and continue statements interact with the else clause of a loop?"
    body = ("Break and continue statements reset the else clause of a loop [1]. "
            "A break statement skips the else clause of the loop [1].")
    filtered = filter_claims(body, [loops], {loops.url: loops.snippet}, question)
    assert filtered.body == "A break statement skips the else clause of the loop [1]."
    assert filtered.dropped == ("Break and continue statements reset the else clause of a loop [1].",)
    unmarked = filter_claims(body.replace(" [1]", ""), [loops], {loops.url: loops.snippet}, question)
    assert unmarked.dropped == ("Break and continue statements reset the else clause of a loop.",)
    assert filter_claims(body, [loops], {loops.url: loops.snippet}).dropped == ()  # without the question: kept
    # seen in the final demo: two words added to the question, the page holding one of them ("suite")
    suite = source("http://corpus/suite", "A break statement terminates the loop without executing the else clause's "
                                          "suite.")
    wrong = "Break and continue statements do not affect the else clause's suite [1]."
    assert filter_claims(wrong, [suite], {suite.url: suite.snippet}, question).dropped == (wrong,)


def test_a_claim_and_its_page_are_compared_by_word_stems():
    # seen in the demo: "statement" against the question's "statements" counted as a word the claim adds, and the
    # page holds it, so the wrong claim stood on 1 of its 2 added words
    loops = source("http://corpus/loops", "The break statement terminates the loop. The else clause is skipped.")
    question = ("In Python, what do the break and continue statements do inside a for or while loop, and how does "
                "the else clause of a loop interact with break?")
    wrong = "The break statement in a for or while loop does not affect the else clause of a loop [1]."
    paraphrase = "A break skips the else clause and terminates the loop [1]."  # "skips"/"skipped", one stem
    filtered = filter_claims(f"{wrong} {paraphrase}", [loops], {loops.url: loops.snippet}, question)
    assert filtered.body == paraphrase and filtered.dropped == (wrong,)


def test_a_claim_that_adds_nothing_to_the_question_is_no_finding_but_a_yes_no_answer_is():
    # seen in the demo: the report's one finding restated the question, and stood because it adds no word to check
    loops = source("http://corpus/loops", "The break statement terminates the loop. The else clause is skipped.")
    question = ("In Python, what do the break and continue statements do inside a for or while loop, and how does "
                "the else clause of a loop interact with break?")
    restated = "The break and continue statements in a for or while loop interact with the else clause of a loop [1]."
    finding = "A break skips the else clause and terminates the loop [1]."
    filtered = filter_claims(f"{restated} {finding}", [loops], {loops.url: loops.snippet}, question)
    assert filtered.body == finding and filtered.dropped == (restated,)
    # to a yes/no question the question's own words are an answer
    affirmed = "The break statement terminates the loop [1]."
    kept = filter_claims(affirmed, [loops], {loops.url: loops.snippet}, "Does the break statement terminate the loop?")
    assert kept.body == affirmed and kept.dropped == ()


def test_a_claim_that_adds_only_how_without_what_is_no_finding():
    # seen in `heavy ask`: kept on the exceptions page, which holds every word of it
    page = source("http://corpus/exceptions", "An exception raised inside a block may be handled by the block. Use "
                  "the raise statement to raise one. The with statement calls the context manager's exit method.")
    question = "How does the with statement handle an exception raised inside its block?"
    empty = "The with statement handles an exception raised inside its block by using the 'raise' statement [1]."
    said = "The with statement calls the context manager's exit method [1]."
    filtered = filter_claims(f"{empty} {said}", [page], {page.url: page.snippet}, question)
    assert filtered.body == said and filtered.dropped == (empty,)


def test_a_claim_must_find_its_words_in_one_passage_of_a_long_page():
    sentences = ["The tower stands on the Champ de Mars.", "Its paint is renewed every seven years.",
                 "Visitors climb the stairs.", "The lifts were installed later.", "The restaurant serves lunch.",
                 "Tickets are sold online.", "It was finished in 1889 for the fair.", "Night lights sparkle.",
                 "Crowds gather at noon."]
    page = source("http://corpus/tower", " ".join(sentences))
    texts = {page.url: " ".join(sentences)}
    near = "It was finished in 1889 for the fair [1]."
    spread = "Champ lifts 1889 [1]."  # each word is on the page, in sentences far apart
    filtered = filter_claims(f"{near} {spread}", [page], texts)
    assert filtered.body == near and filtered.dropped == (spread,)


def test_a_claim_that_says_not_needs_a_passage_that_says_not():
    # seen in `heavy ask`: "the with statement does not execute code within a context manager" was marked "on [4]",
    # a page that holds its words and says the opposite
    loops = source("http://corpus/loops", "The break statement terminates the loop. The else clause is skipped. "
                                          "Functions are defined with def. Classes are defined with class. "
                                          "Modules are imported with import. "
                                          "A continue statement never terminates the loop.")
    texts = {loops.url: loops.snippet}
    negated = "The break statement does not terminate the loop [1]."
    attributed = "The else clause is never skipped."
    right = "A continue statement does not terminate the loop [1]."
    filtered = filter_claims(f"{negated} {attributed} {right}", [loops], texts)
    assert filtered.body == right and filtered.dropped == (negated, attributed)
    assert filter_claims("The break statement terminates the loop [1].", [loops], texts).dropped == ()


def test_a_sentence_only_about_its_sources_is_no_finding_whatever_the_question():
    # seen with the 1.5B model's report pass; too short for the word check, they stood as findings
    series = source("http://corpus/animorphs", "Animorphs is a science fantasy series of young adult books.")
    for question in ("Which science fantasy young adult series is told in first person?",
                     "Is Animorphs a science fantasy young adult series?"):
        talk = ["This series is described in [1].", "This is supported by the information in [1]."]
        finding = "Animorphs is a science fantasy series of young adult books [1]."
        filtered = filter_claims(" ".join([*talk, finding]), [series], {series.url: series.snippet}, question)
        assert filtered.body == finding and filtered.dropped == tuple(talk)



def test_a_claim_copied_across_an_excerpts_cut_is_no_claim():
    # seen in the demo's report: a sentence of the prompt's excerpt copied up to where the excerpt cut it, "…" and
    # all ('... or with the "else" clause if there … [1][2]'); and two excerpt pieces joined at their " … "
    loops = source("http://corpus/for", "A break statement terminates the loop without executing the else clause. "
                                        "The loop ends when the items are exhausted, or with the else clause if "
                                        "there is one. A continue statement skips the rest of the suite.")
    texts = {loops.url: loops.snippet}
    cut = "The loop ends when the items are exhausted, or with the else clause if there … [1]."
    joined = "A break statement terminates the loop … a continue statement skips the rest of the suite [1]."
    trailing = "The loop ends when the items are exhausted, or with the else clause if there... [1]"
    whole = "A continue statement skips the rest of the suite [1]."
    filtered = filter_claims(f"{cut} {joined} {whole}", [loops], texts)
    assert filtered.body == whole and filtered.dropped == (cut, joined)
    assert filter_claims(trailing, [loops], texts).dropped == (trailing,)
    # whole sentences copied between the cuts stand on their own, with the citations (seen in a HotpotQA report)
    copied = ("Kate Higgins: … singer and pianist. … In 2010, she voiced Tails in \"Sonic\". … She also voices … [3]")
    higgins = source("http://corpus/higgins", "Kate Higgins is an American voice actress, singer and pianist. "
                                              "In 2010, she voiced Tails in \"Sonic\". She also voices Sakura.")
    filtered = filter_claims(copied, [EIFFEL, LOUVRE, higgins], {higgins.url: higgins.snippet})
    assert filtered.body == 'In 2010, she voiced Tails in "Sonic" [3].'
    assert filtered.dropped == ("Kate Higgins:", "singer and pianist.", "She also voices")
    # an ellipsis the page writes itself is no cut (Python's reference: 'the "try" … "except" statement')
    handlers = source("http://corpus/exceptions", 'Exception handlers are specified with the "try" … "except" '
                                                  'statement. The "finally" clause runs anyway.')
    own = "Exception handlers are specified with the 'try' … 'except' statement [1]."
    assert filter_claims(own, [handlers], {handlers.url: handlers.snippet}).body == own
    # the docs' own "try ... except" is no cut
    assert filter_claims(EXCEPTIONS.snippet.split(". ")[0] + " [1].", [EXCEPTIONS],
                         {EXCEPTIONS.url: EXCEPTIONS.snippet}).dropped == ()


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
