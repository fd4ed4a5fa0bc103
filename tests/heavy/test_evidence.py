"""Pooled evidence for the judge: ranking over every trajectory's pages, and the answer-overlap F1."""

import pytest

from heavy.agent.steps import TrajectoryResult
from heavy.aggregate.evidence import pooled_passages, section_headings, token_f1
from heavy.llm.types import Usage
from tests.heavy.fakes import source

QUESTION = "Which record label signed the band whose drummer wrote Northern Lights?"
COMMON = source("http://corpus/lights", "Northern Lights is a song. The band toured widely and the song charted.")
SECOND_HOP = source("http://corpus/band", "The Frost signed with Polar Records; their drummer wrote Northern Lights.")
OFF_TOPIC = source("http://corpus/weather", "Northern lights are seen in winter.")


def result(index, answer, evidence, cited=()):
    return TrajectoryResult(index=index, answer=answer, confidence=0.5, stop_reason="answered", cited=tuple(cited),
                            evidence=tuple(evidence), steps=(), usage=Usage(), temperature=0.0, seed=index,
                            excerpts={s.url: s.snippet for s in evidence})


def test_a_second_hop_page_found_once_outranks_the_opening_results_all_saw():
    results = [result(k, "Northern Lights", [COMMON, OFF_TOPIC]) for k in range(7)]
    results.append(result(7, "Polar Records", [COMMON, OFF_TOPIC, SECOND_HOP], cited=[SECOND_HOP]))
    passages = pooled_passages(QUESTION, results, ["Polar Records", "Northern Lights"], k=2)
    assert [p.url for p in passages] == [SECOND_HOP.url, COMMON.url]
    assert passages[0].text.startswith("The Frost signed")


def test_passages_are_cut_and_empty_evidence_gives_none():
    results = [result(0, "x", [SECOND_HOP])]
    assert len(pooled_passages(QUESTION, results, max_chars=20)[0].text) == 20
    assert pooled_passages(QUESTION, [result(0, "x", [])]) == []


def test_token_f1_is_the_squad_overlap():
    assert token_f1("The Polar Records", "polar records") == 1.0
    assert token_f1("Polar", "Polar Records") == 2 * (1.0 * 0.5) / 1.5
    assert token_f1("yes", "no") == 0.0


PICKS = {  # what the judge's pages must hold: (question, {url: text} in fetch order, k, the pages picked)
    "each part of a two-part question, not a second page on one part": (
        "Were Anna Lindqvist and Marco Bellini of the same nationality?",
        {"anna": "Anna Lindqvist is a Swedish painter.",
         "anna-2": "Anna Lindqvist exhibited in Anna Lindqvist Hall, Uppsala.",
         "marco": "Marco Bellini is an Italian cyclist."}, 2, {"anna", "marco"}),
    "the page of a named thing, not a page that only mentions it": (  # pages are titled by their url's last part
        "Hayden is a singer from Canada, but where does Buck-Tick hail from?",
        {"Sakurai": "Atsushi Sakurai is the singer of Buck-Tick, from Japan.",
         "Buck-Tick": "Buck-Tick is a rock band from Fujioka, Gunma."}, 1, {"Buck-Tick"}),
    "the page a picked page names: the next hop": (
        "How many people can the arena where the Lewiston Maineiacs played sit?",
        {"Maineiacs": "The Lewiston Maineiacs played at the Androscoggin Bank Colisée.",
         "Dwyer": "Dwyer Arena is a college arena.",
         "Androscoggin Bank Colisée": "The Colisée has 3,677 seats."}, 2, {"Maineiacs", "Androscoggin Bank Colisée"}),
}


@pytest.mark.parametrize("question, pages, k, picked", PICKS.values(), ids=PICKS.keys())
def test_the_judge_pages_cover_the_question(question, pages, k, picked):
    fetched = [source(f"http://corpus/{name}", text) for name, text in pages.items()]
    passages = pooled_passages(question, [result(0, "", fetched)], k=k)
    assert {p.url.removeprefix("http://corpus/") for p in passages} == picked


def test_each_sentence_knows_the_heading_of_its_section():
    text = ("Intro text here. More intro.\n\n## The while statement\n\nIt loops. It stops.\n\n"
            'The "for" statement\n===================\n\nIt iterates.\n\nThe "try" statement *********\n\n'
            "It catches. It loops.")
    assert section_headings(text) == {"Intro text here.": "", "More intro.": "", "It loops.": "The while statement",
                                      "It stops.": "The while statement", "It iterates.": 'The "for" statement',
                                      "It catches.": 'The "try" statement'}  # a sentence twice: its first section
