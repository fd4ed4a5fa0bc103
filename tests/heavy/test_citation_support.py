"""Which of the report's claims a fetched page supports: a marker to a page never fetched or not holding the claim,
an uncited sentence attributed to the page holding its words, the words compared by stems within one passage, a
claim that adds nothing to the question, a negation, a claim about its sources or copied across an excerpt's cut.
What a claim is and how it is cited: test_citations.py."""

from heavy.aggregate.citations import filter_claims
from tests.heavy.fakes import source
from tests.heavy.test_citations import EIFFEL, EXCEPTIONS, LOUVRE


def test_a_claim_matches_the_words_of_a_page_opened_as_escaped_markdown():
    # open_page's trafilatura writes "__enter__" as "\_\_enter\_\_": the claim's word was on no passage, so dropped
    page = source("http://corpus/with", "x")
    opened = "The with statement calls \\_\\_enter\\_\\_ on entry and \\_\\_exit\\_\\_ on exit."
    claim = "`__enter__` and `__exit__` are called [1]."
    kept = filter_claims(claim, [page], {page.url: opened})
    assert kept.body == claim and kept.dropped == ()


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
