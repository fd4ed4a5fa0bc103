"""Pooled evidence for the judge: ranking over every trajectory's pages, and the answer-overlap F1."""

from heavy.agent.steps import TrajectoryResult
from heavy.aggregate.evidence import pooled_passages, token_f1
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


def test_each_part_of_a_two_part_question_gets_a_page_before_a_second_page_on_one_part():
    question = "Were Anna Lindqvist and Marco Bellini of the same nationality?"
    pages = [source("http://corpus/anna", "Anna Lindqvist is a Swedish painter."),
             source("http://corpus/anna-2", "Anna Lindqvist exhibited in Anna Lindqvist Hall, Uppsala."),
             source("http://corpus/marco", "Marco Bellini is an Italian cyclist.")]
    passages = pooled_passages(question, [result(0, "yes", pages)], k=2)
    assert {p.url for p in passages} == {"http://corpus/anna", "http://corpus/marco"}  # not the second Anna page


def test_the_page_of_a_named_thing_beats_a_page_that_only_mentions_it():
    question = "Hayden is a singer from Canada, but where does Buck-Tick hail from?"
    pages = [source("http://corpus/Sakurai", "Atsushi Sakurai is the singer of Buck-Tick, from Japan."),
             source("http://corpus/Buck-Tick", "Buck-Tick is a rock band from Fujioka, Gunma.")]  # titled by url
    passages = pooled_passages(question, [result(0, "", pages)], k=1)
    assert [p.url for p in passages] == ["http://corpus/Buck-Tick"]


def test_the_page_a_picked_page_names_is_the_next_hop():
    question = "How many people can the arena where the Lewiston Maineiacs played sit?"
    pages = [source("http://corpus/Maineiacs", "The Lewiston Maineiacs played at the Androscoggin Bank Colisée."),
             source("http://corpus/Dwyer", "Dwyer Arena is a college arena."),
             source("http://corpus/Androscoggin Bank Colisée", "The Colisée has 3,677 seats.")]
    passages = pooled_passages(question, [result(0, "", pages)], k=2)
    assert [p.url for p in passages] == ["http://corpus/Maineiacs", "http://corpus/Androscoggin Bank Colisée"]
