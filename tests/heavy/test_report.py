"""Report mode: numbered citations over fetched sources, disagreements, quotes of the best sentences."""

import dataclasses
import html as html_module
import json
import re
import urllib.parse

import pytest

from heavy.agent.steps import ActionStep, Observation
from heavy.aggregate import AggregationConfig, aggregate
from heavy.aggregate.evidence import best_sentences, fetched_texts, question_weights
from heavy.api.report_html import report_html
from heavy.llm.types import ToolCall, Usage
from tests.heavy.fakes import ScriptedBackend, source, text
from tests.heavy.test_aggregate import EIFFEL, LOUVRE, result

pytestmark = pytest.mark.anyio


async def test_report_numbers_citations_over_fetched_sources_and_notes_disagreement():
    written = ("The Eiffel Tower was finished in 1889 [2]. A blog says 1887 [9]. "
               "Its paint is [blue](http://evil.example/paint).")
    backend = ScriptedBackend(lambda request: text(written, usage=Usage(300, 40)))
    results = [result(0, "1889", cited=[EIFFEL], evidence=[LOUVRE, EIFFEL]), result(1, "1889", cited=[EIFFEL]),
               result(2, "1887", evidence=[LOUVRE])]
    job = await aggregate(job_id="j", question="When was the Eiffel Tower finished?", mode="report",
                          results=results, backend=backend)
    assert job.answer == "1889" and job.status == "done"
    # union order: cited first (eiffel = [1]), then other evidence (louvre = [2]) — the LLM's [2] was the louvre
    prompt = backend.requests[0].messages[0]["content"]
    assert "[1] eiffel: The Eiffel Tower" in prompt and "[2] louvre: The Louvre" in prompt
    assert "http://" not in prompt  # URLs in the prompt get copied into the report
    assert "**Answer:** 1889 [1]" in job.markdown
    # the model cited the Louvre page for the tower: the claim goes to the page holding its words
    assert "The Eiffel Tower was finished in 1889 [1]." in job.markdown
    assert "1887 [9]" not in job.markdown and "evil.example" not in job.markdown
    assert job.dropped_claims == ("A blog says 1887 [9].", "Its paint is [blue](http://evil.example/paint).")
    assert '“1887”: trajectory 3' in job.markdown
    assert [s.url for s in job.sources] == ["http://corpus/eiffel"]  # the sources the kept claims cite
    assert "1. [eiffel](http://corpus/eiffel)" in job.markdown
    data = json.loads(job.to_json())
    # the trajectories' and the report pass's tokens: the kept claim is its page's sentence word for word, which the
    # claim check does not ask the model about
    assert data["tokens"]["total"] == 3 * 110 + 340 and data["sources"][0]["content_hash"] == EIFFEL.content_hash
    assert [r.request_id for r in backend.requests] == ["report"]


async def test_the_disagreement_list_quotes_a_copied_page_short_and_without_its_url():
    copied = "Eiffel Tower <http://corpus/eiffel> " + " ".join(f"word{i}" for i in range(60))
    backend = ScriptedBackend(lambda request: text("The Eiffel Tower was finished in 1889 [1]."))
    results = [result(0, "1889", cited=[EIFFEL]), result(1, copied, evidence=[EIFFEL])]
    job = await aggregate(job_id="j", question="When was the Eiffel Tower finished?", mode="report",
                          results=results, backend=backend)
    listed = job.markdown.split("## What each trajectory answered")[1].split("## Sources")[0]
    assert '“Eiffel Tower word0 word1' in listed and "word27 …”: trajectory 2" in listed
    assert "http://" not in listed and "word28" not in listed


async def test_a_report_without_a_majority_headlines_no_lone_answer():
    backend = ScriptedBackend(lambda request: text("The Eiffel Tower was finished in 1889 [1]."))
    results = [result(0, "1889", cited=[EIFFEL]), result(1, "1887", cited=[LOUVRE]), result(2, "1901")]
    job = await aggregate(job_id="j", question="When was the Eiffel Tower finished?", mode="report",
                          results=results, backend=backend)
    assert job.answer == "" and job.agreement == 0.0 and job.votes == {"1889": 1, "1887": 1, "1901": 1}
    assert "**Answer:** the 3 trajectories did not agree" in job.markdown
    assert "The Eiffel Tower was finished in 1889 [1]." in job.markdown
    assert all(f'“{year}”: trajectory ' in job.markdown for year in ("1889", "1887", "1901"))
    lone = await aggregate(job_id="j", question="When was the Eiffel Tower finished?", mode="report",
                           results=results[:1], backend=backend)
    assert lone.answer == "1889" and "**Answer:** 1889 [1]" in lone.markdown  # one trajectory: its answer


async def test_a_report_whose_answers_are_sentences_does_not_call_them_a_disagreement():
    # seen in the demo: four answers in sentences of their own, three saying the same thing, were listed under
    # "Where the trajectories disagreed"
    backend = ScriptedBackend(lambda request: text("The Eiffel Tower was finished in 1889 [1]."))
    results = [result(0, "The tower was finished in 1889 for the World's Fair.", cited=[EIFFEL]),
               result(1, "Gustave Eiffel's company completed the tower in 1889.", cited=[EIFFEL]),
               result(2, "1887")]
    job = await aggregate(job_id="j", question="When was the Eiffel Tower finished?", mode="report",
                          results=results, backend=backend)
    assert job.answer == "" and "**Answer:** no one answer: the 3 trajectories answered in sentences" in job.markdown
    assert "disagreed" not in job.markdown and "did not agree" not in job.markdown
    listed = job.markdown.split("## What each trajectory answered")[1].split("## Sources")[0]
    assert '“1887”: trajectory 3' in listed and "World's Fair.”: trajectory 1" in listed


async def test_the_answer_list_says_which_answers_a_fetched_page_holds():
    # seen in the demo: a right answer copied from a page and a wrong "do not affect" were listed alike
    page = source("http://corpus/fair", "The Eiffel Tower was finished in 1889 for the World's Fair. "
                                        "It was built as the entrance arch of the fair by Gustave Eiffel's company.")
    backend = ScriptedBackend(lambda request: text("Yes" if request.request_id.startswith("answer-check")
                                                   else "Paris is lovely in spring."))  # the model weighs the answers
    results = [result(0, "The tower was finished in 1889 for the World's Fair.", cited=[page]),
               result(1, "The tower was built by Napoleon to defend Paris against invaders.", evidence=[LOUVRE]),
               result(2, "It was built as the entrance arch of the fair. Napoleon defended Paris with its guns."),
               result(3, "1887"), result(4, "Gustave Eiffel"),
               result(5, "The Eiffel Tower was built for an event. It was built as the entrance arch of the fair."),
               result(6, "The Eiffel Tower is built for eventing."),
               result(7, "The Eiffel Tower was built for an event."), result(8, "Built by Gustave Eiffel's company")]
    job = await aggregate(job_id="j", question="Why and for which event was the Eiffel Tower built?", mode="report",
                          results=results, backend=backend)
    listed = job.markdown.split("## What each trajectory answered")[1].split("## Sources")[0]
    fair = [s.url for s in job.sources].index(page.url) + 1
    assert f'World\'s Fair.”: trajectory 1 — its words are on [{fair}]' in listed
    assert 'invaders.”: trajectory 2 — its words are on no fetched page' in listed
    assert f'its guns.”: trajectory 3 — 1 of its 2 sentences is on [{fair}]' in listed
    # a short answer is looked for as it stands
    assert '“1887”: trajectory 4 — its words are on no fetched page' in listed
    assert f'“Gustave Eiffel”: trajectory 5 — its words are on [{fair}]' in listed
    # a short answer not on a page as written, whose words are
    assert f'“Built by Gustave Eiffel\'s company”: trajectory 9 — its words are on [{fair}]' in listed
    # a sentence that restates the question (by stems: "eventing" is "event") is neither on a page nor against it
    assert f'of the fair.”: trajectory 6 — its words are on [{fair}]' in listed
    assert '“The Eiffel Tower is built for eventing.”: trajectory 7 — it only restates the question' in listed
    # one that restates it word for word does not vote, and is listed all the same
    assert '“The Eiffel Tower was built for an event.”: trajectory 8 — not an answer to the question' in listed
    assert ("by its words, then by the model weighing each sentence against its negation and with its numbers or "
            "names swapped") in listed


async def test_a_pages_title_or_printed_output_given_to_a_how_question_does_not_vote():
    # seen in `heavy ask`: trajectories told their answer was a page's title, or what their code printed, gave it
    # again, and the report listed them "on [2]" and "on no fetched page"
    managers = dataclasses.replace(
        source("http://corpus/managers", "A context manager handles the entry into and the exit from a block."),
        title="Python reference: With Statement Context Managers")
    answer = "The context manager handles the exit from the block, exception or not."
    backend = ScriptedBackend(lambda request: text(answer))
    run = ToolCall(id="c1", name="python", arguments={"code": "print('Hello, world!')"})
    printing = ActionStep(index=1, content="", reasoning="", calls=(run,), usage=Usage(),
                          observations=(Observation(call=run, text="Hello, world!\n"),))
    results = [result(0, "Python reference: With Statement Context Managers", evidence=[managers]),
               result(1, "With Statement Context Managers", evidence=[managers]), result(2, answer, cited=[managers]),
               dataclasses.replace(result(3, "Hello, world!", evidence=[managers]), steps=(printing,)),
               dataclasses.replace(result(4, "the exit from a block", evidence=[managers]),
                                   steps=(dataclasses.replace(printing, observations=(
                                       Observation(call=run, text="the exit from a block"),)),))]
    job = await aggregate(job_id="j", question="How does the with statement handle an exception?", mode="report",
                          results=results, backend=backend)
    listed = job.markdown.split("## What each trajectory answered")[1].split("## Sources")[0]
    assert ("“Python reference: With Statement Context Managers”: trajectory 1 — not an answer to the question (it "
            "did not vote)") in listed
    assert "“With Statement Context Managers”: trajectory 2 — not an answer to the question" in listed
    assert "“Hello, world!”: trajectory 4 — not an answer to the question" in listed
    # what the code printed, when a fetched page writes it too, came from the pages: it votes
    assert "“the exit from a block”: trajectories 5, 3 — its words are on [1]" in listed
    # a title answers a question asking which page or thing: it votes there
    which = await aggregate(job_id="j", question="Which reference topic covers context managers?", mode="answer",
                            results=results[:2], backend=backend)
    assert which.answer.endswith("With Statement Context Managers")


async def test_trajectories_without_an_answer_are_listed_but_not_as_a_disagreement():
    # seen in `heavy ask`: two trajectories stopped by the deadline were listed under "Where the trajectories
    # disagreed"
    backend = ScriptedBackend(lambda request: text("The Eiffel Tower was finished in 1889 [1]."))
    question = "When was the Eiffel Tower finished?"
    one = await aggregate(job_id="j", question=question, mode="report", backend=backend,
                          results=[result(0, "1889", cited=[EIFFEL]), result(1, ""), result(2, "")])
    listed = one.markdown.split("## What each trajectory answered")[1].split("## Sources")[0]
    assert '“1889”: trajectory 1' in listed and "No answer: trajectories 2, 3" in listed
    assert "disagreed" not in one.markdown
    none = await aggregate(job_id="j", question=question, mode="report", backend=backend,
                           results=[result(0, "", evidence=[EIFFEL]), result(1, "", evidence=[EIFFEL])])
    assert "**Answer:** no trajectory found an answer it could support." in none.markdown
    assert "The Eiffel Tower was finished in 1889 [1]." in none.markdown  # the findings of the fetched pages
    assert "No answer:" not in none.markdown and "disagreed" not in none.markdown


def test_the_best_sentences_weigh_the_questions_rarer_words_and_fit_a_budget():
    question = "How does the else clause of a Python loop interact with break?"
    pages = ["Python loops. The else clause runs when the loop ends normally. A break skips the else clause. "
             "Python is a language with a loop and a clause for everything.",
             "Python code. Python has many statements in Python modules.", "Python again, the loop of Python here."]
    weights = question_weights(question, pages)
    assert weights["break"] > weights["loop"] > weights["python"]  # every page says python, one says break
    assert best_sentences(question, pages[0], count=1, weights=weights) == ["A break skips the else clause."]
    picked = best_sentences(question, pages[0], count=9, weights=weights, max_chars=80)
    assert picked == ["The else clause runs when the loop ends normally.", "A break skips the else clause."]
    assert best_sentences("Who painted it?", pages[1], weights=question_weights("Who painted it?", pages)) == []
    repeated = "The else clause is skipped by a break. Loops end. The else clause is skipped by a break."
    assert best_sentences(question, repeated, count=2) == ["The else clause is skipped by a break."]
    assert "what" not in question_weights("What statements break a loop?", pages)  # the question's own words
    assert best_sentences("Which statements end loops?", "A break statement ends the loop.", count=1) == [
        "A break statement ends the loop."]  # plural or not, the same word
    # seen in `heavy ask`: a page's title and URL header, and its Markdown title, quoted as its best sentences
    headed = ("# Python reference: Compound statements\nURL: http://corpus/22\n\n# Python reference: Compound "
              "statements\n\nThe break statement\n===================\n\nA break statement ends the loop.")
    assert best_sentences("Which statements end loops?", headed, count=3) == ["A break statement ends the loop."]
    starred = "Loop statements that end loops\n*******************************\n\nA break statement ends the loop."
    assert best_sentences("Which statements end loops?", starred, count=3) == ["A break statement ends the loop."]


async def test_the_report_prompt_shows_the_most_relevant_sources_first_and_only_a_few():
    pages = [source("http://corpus/p0", "Page 0 is about the lifts of the Eiffel Tower.")]
    pages += [source(f"http://corpus/p{i}", f"Page {i} is about the Louvre museum and its many rooms.")
              for i in range(1, 4)]
    pages.append(source("http://corpus/tower", "The Eiffel Tower in Paris was finished in 1889 for the fair."))
    backend = ScriptedBackend(lambda request: text("The Eiffel Tower was finished in 1889 [5]."))
    results = [result(0, "The tower was finished\nin 1889.", cited=[pages[0]], evidence=pages),
               result(1, "1887", evidence=pages)]
    job = await aggregate(job_id="j", question="When was the Eiffel Tower finished?", mode="report",
                          results=results, backend=backend, config=AggregationConfig(report_sources=2))
    prompt = next(r for r in backend.requests if r.request_id == "report").messages[0]["content"]
    sources = prompt.split("Question:")[0]
    assert sources.index("[5] tower: The Eiffel Tower") < sources.index("[1] p0")  # numbers stay the union's
    assert "[2] p1" not in sources and "[3] p2" not in sources  # only the two most relevant are shown
    assert "answered: The tower was finished in 1889. (confidence" in prompt  # one line per answer
    assert "The Eiffel Tower was finished in 1889 [1]." in job.markdown  # renumbered in the report
    # the citation format is shown on the most relevant source's first sentence, cited: copied, it is a true claim
    assert 'like this: "The Eiffel Tower in Paris was finished in 1889 for the fair [5]."' in prompt
    # with room for all, a page whose excerpt holds no word of the question is still not shown
    await aggregate(job_id="j", question="When was the Eiffel Tower finished?", mode="report", results=results,
                    backend=backend, config=AggregationConfig(report_sources=6))
    roomy = [r for r in backend.requests if r.request_id == "report"][-1].messages[0]["content"].split("Question:")[0]
    assert "[1] p0" in roomy and "[5] tower" in roomy and "Louvre" not in roomy


async def test_a_report_pass_copying_its_format_example_writes_a_claim_its_page_holds():
    # seen in 22 of 31 HotpotQA reports of the embedded model with a made-up example ("The tower was finished in 1889
    # [2].", dropped as on no page): often all the pass wrote
    louvre = source("http://corpus/louvre", "The Louvre is the world's most visited museum. It opened in 1793.")
    backend = ScriptedBackend(lambda request: text(request.messages[0]["content"].split('like this: "')[1]
                                                   .split('"')[0]))
    job = await aggregate(job_id="j", question="Which museum is the most visited?", mode="report",
                          results=[result(0, "The Louvre", cited=[louvre])], backend=backend,
                          config=AggregationConfig(check_claims=False))
    findings = job.markdown.split("## Findings")[1].split("\n## ")[0].split("From the fetched pages")[0]
    assert findings.strip() == "The Louvre is the world's most visited museum [1]." and not job.dropped_claims


async def test_with_no_page_fetched_there_is_no_report_pass():
    backend = ScriptedBackend(lambda request: text("The Louvre is the most visited museum [1]."))
    job = await aggregate(job_id="j", question="Which museum is the most visited?", mode="report",
                          results=[result(0, "The Louvre"), result(1, "The Louvre")], backend=backend)
    assert not backend.requests and job.answer == "The Louvre" and "## Findings" not in job.markdown


def test_the_aggregator_reads_all_the_trajectories_saw_of_a_page():
    head = "The Eiffel Tower is in Paris.\n\nIt is made of iron."
    opened, further = source("http://corpus/eiffel", head), source("http://corpus/eiffel", "… finished in 1889 …")
    results = [result(0, "1889", cited=[opened]), result(1, "1889", cited=[further]),
               result(2, "Paris", cited=[source("http://corpus/eiffel", "… made of iron …")])]
    assert fetched_texts(results) == {"http://corpus/eiffel": f"{head}\n\n… finished in 1889 …"}


async def test_the_fallback_quotes_the_best_sentences_of_all_pages_best_first_each_once():
    backend = ScriptedBackend(lambda request: text("Paris is lovely in spring."))
    intro = source("http://corpus/intro", "Paris has the Eiffel tower. Paris has many museums and a tower.")
    said = "The Eiffel tower was finished in 1889."
    tower = source("http://corpus/tower", f"{said} {said}")
    cut = source("http://corpus/fair", "… the Eiffel tower was finished for the fair.")  # a snippet's cut head
    tail = source("http://corpus/list", "Eiffel tower finished tower Eiffel 1889 tower finished …")  # and cut tail
    results = [result(0, "1889", cited=[intro], evidence=[intro, tower, cut, tail]),
               result(1, "1889", evidence=[tower])]
    job = await aggregate(job_id="j", question="When was the Eiffel tower finished?", mode="report",
                          results=results, backend=backend)
    quotes = job.markdown.split("passages found:")[1].split("## ")[0].strip().splitlines()
    # the answer's source comes first in the report's numbering; the sentence that states the answer is quoted
    # beside it, and not again among the quotes
    assert '2 of 2 trajectories gave this answer. A fetched page says: “The Eiffel tower was finished in 1889.” [2]' \
        in job.markdown
    # "Paris has many museums and a tower" holds far less of the question than the best sentence: not quoted
    assert quotes == ['- “Paris has the Eiffel tower.” [1]']


async def test_findings_are_followed_by_the_best_sentences_they_do_not_already_say():
    tower = source("http://corpus/tower", "The Eiffel Tower was finished in 1889. Gustave Eiffel's company built "
                                          "and finished the Eiffel Tower in 1889. The tower is 330 metres tall.")
    said = "The Eiffel Tower was built and finished in 1889 by a company [1]."
    backend = ScriptedBackend(lambda request: text(said))
    results = [result(0, "", evidence=[tower, LOUVRE])]  # no answer, whose sentence would be quoted beside it
    job = await aggregate(job_id="j", question="When and by whom was the Eiffel Tower built?", mode="report",
                          results=results, backend=backend)
    findings = job.markdown.split("## Findings")[1].split("## ")[0]
    assert findings.strip().splitlines() == [
        said, "", "From the fetched pages, word for word:", "",
        "- “Gustave Eiffel's company built and finished the Eiffel Tower in 1889.” [1]"]
    # not the finding again (its words beyond the question's, "finished" and "1889", are all said), nor "The tower is
    # 330 metres tall.", which holds only "tower" of the question; the quote adds "Gustave" to 3 words said (seen in
    # the demo: "A break statement executed in the first suite terminates the loop ..." went unquoted beside a
    # finding on "executed in the first suite")


async def test_report_with_no_answer_at_all_still_says_so():
    backend = ScriptedBackend(lambda request: text("Nothing is known."))
    job = await aggregate(job_id="j", question="Q?", mode="report", results=[result(0, "")], backend=backend)
    assert job.answer == "" and "no trajectory found an answer" in job.markdown and not job.sources
    assert backend.requests == []  # nothing to write about: no report pass


async def test_a_report_pass_with_no_supported_claim_falls_back_to_quoting_the_best_pages():
    backend = ScriptedBackend(lambda request: text("Paris is lovely in spring. I cannot say more."))
    tower = source("http://corpus/tower", "The Eiffel Tower is a landmark. The tower was finished in 1889 for a fair.")
    results = [result(0, "1889", cited=[tower], evidence=[tower, LOUVRE])]
    job = await aggregate(job_id="j", question="When was the Eiffel Tower finished?", mode="report",
                          results=results, backend=backend)
    # the sentence stating the answer stands beside it; the fallback quotes the page's other sentence
    assert 'A fetched page says: “The tower was finished in 1889 for a fair.” [1]' in job.markdown
    assert '- “The Eiffel Tower is a landmark.” [1]' in job.markdown
    assert job.dropped_claims == ("Paris is lovely in spring.", "I cannot say more.")
    assert [s.url for s in job.sources][0] == tower.url


async def test_the_report_pass_is_not_shown_answers_no_fetched_page_holds():
    # seen in the demo: trajectory 2's "do not affect the else clause", on no fetched page, was written into the
    # report twice by the report pass (and dropped by the claim filter)
    backend = ScriptedBackend(lambda request: text("The Eiffel Tower was finished in 1889 [1]."))
    results = [result(0, "The Eiffel Tower was finished in 1889.", cited=[EIFFEL]),
               result(1, "The Eiffel Tower was never finished by Napoleon.", evidence=[LOUVRE]), result(2, "1887")]
    await aggregate(job_id="j", question="When was the Eiffel Tower finished?", mode="report", results=results,
                    backend=backend)
    findings = next(r for r in backend.requests if r.request_id == "report").messages[0]["content"]
    findings = findings.split("answered:", 1)[1]
    assert "1889" in findings and "Napoleon" not in findings and "1887" not in findings
    assert "Researcher 2 gave an answer that no source text holds." in findings
    assert "Researcher 3 gave an answer that no source text holds." in findings


def _cite_links(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'data-cite="(\d+)"', html)]


async def test_a_pages_footnotes_and_an_answers_own_markers_are_text_not_citations():
    # a page's footnote marks ("1889.[3]"), quoted word for word, and a trajectory's own "[2]" (its search results'
    # numbering) were renumbered as the report's citations, linked to whatever source had that number
    wiki = source("http://corpus/wiki", "The Eiffel Tower was finished in 1889.[3] It is 330 metres tall.[1]")
    backend = ScriptedBackend(lambda request: text("Nothing to say."))
    question = "When was the Eiffel Tower finished, per list[1]?"
    results = [result(0, "The Eiffel Tower was finished in 1889 [2].", cited=[EIFFEL], evidence=[EIFFEL, LOUVRE]),
               result(1, "It was finished in 1887 [1].", cited=[LOUVRE], evidence=[wiki])]
    job = await aggregate(job_id="j", question=question, mode="report", results=results, backend=backend)
    html = report_html(job.markdown)
    # every citation the reader can follow points at a listed source, and every listed source is cited
    assert sorted(set(_cite_links(html))) == list(range(1, len(job.sources) + 1))
    assert "It is 330 metres tall." in job.markdown and "tall.[1]" not in job.markdown  # the page's mark is text
    assert "tall.[1]" in html and "1889.[3]" in html and "list[1]?" in html  # shown as written, not as links
    assert "finished in 1889 [2].”" in html  # the answer's own marker as it wrote it


async def test_the_sources_list_holds_exactly_the_sources_the_report_cites():
    # all trajectories gave one answer in sentences: the answer list, and the pages it marks, are not shown, but
    # those pages were listed under Sources, cited nowhere
    fair = source("http://corpus/fair", "The tower was built for the 1889 World's Fair in Paris.")
    answer = "The Eiffel Tower was finished in 1889 for the World's Fair."
    backend = ScriptedBackend(lambda request: text("Nothing to say."))
    results = [result(i, answer, cited=[EIFFEL], evidence=[EIFFEL, fair]) for i in range(3)]
    job = await aggregate(job_id="j", question="When was the Eiffel Tower finished?", mode="report",
                          results=results, backend=backend)
    html = report_html(job.markdown)
    assert sorted(set(_cite_links(html))) == list(range(1, len(job.sources) + 1))
    assert [s["url"] for s in json.loads(job.to_json())["sources"]] == [s.url for s in job.sources]


async def test_an_answers_own_marker_is_not_read_as_a_report_source():
    # a trajectory numbers the results of its own searches: its "[1]" is no citation of the report's source 1, and
    # a claim too short to check by its words passed on that marker alone ("its words are on [1]", a page on 1889)
    backend = ScriptedBackend(lambda request: text("Nothing to say."))
    results = [result(0, "1889", cited=[EIFFEL]), result(1, "It was finished in 1887 [1].", evidence=[LOUVRE])]
    job = await aggregate(job_id="j", question="When was the Eiffel Tower finished?", mode="report",
                          results=results, backend=backend)
    assert "“It was finished in 1887 \\[1\\].”: trajectory 2 — its words are on no fetched page" in job.markdown


async def test_a_page_title_is_escaped_in_its_sources_entry():
    title = "Tower ] notes\n[2] <http://evil.example> *1889* & more"
    tower = dataclasses.replace(EIFFEL, title=title)
    backend = ScriptedBackend(lambda request: text("The Eiffel Tower was finished in 1889 [1]."))
    job = await aggregate(job_id="j", question="When was the Eiffel Tower finished?", mode="report",
                          results=[result(0, "1889", cited=[tower])], backend=backend)
    entry = job.markdown.split("## Sources\n\n")[1]
    assert len(entry.splitlines()) == 1  # the title's line break would have ended the entry
    html = report_html(job.markdown)
    assert ('<a href="http://corpus/eiffel" target="_blank" rel="noopener noreferrer">Tower ] notes [2] '
            "&lt;http://evil.example&gt; *1889* &amp; more</a>") in html
    assert set(re.findall(r'href="([^"]*)"', html)) == {"#src-1", "http://corpus/eiffel"}


@pytest.mark.parametrize("url", ["http://corpus/eiffel tower", "http://corpus/eiffel_(tower", "http://corpus/a)b<c>\\d"])
async def test_a_page_url_is_escaped_in_its_sources_entry(url):
    # a space or an unbalanced ")" ended the link's address early: the entry rendered as text and a broken link
    tower = dataclasses.replace(EIFFEL, url=url)
    backend = ScriptedBackend(lambda request: text("The Eiffel Tower was finished in 1889 [1]."))
    job = await aggregate(job_id="j", question="When was the Eiffel Tower finished?", mode="report",
                          results=[result(0, "1889", cited=[tower])], backend=backend)
    html = report_html(job.markdown)
    href = re.search(r'<li id="src-1" dir="auto"><a href="([^"]*)"[^>]*>eiffel</a> — fetched', html)
    assert href is not None, html
    assert urllib.parse.unquote(html_module.unescape(href.group(1))) == url
