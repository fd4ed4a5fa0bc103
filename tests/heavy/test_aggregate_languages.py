"""Aggregation of answers and reports written in Chinese, Japanese and Russian, and of answers in other forms of one
script (full-width, decomposed): claims are the sentences these write, answers are one when they say one thing."""

import unicodedata

from heavy.agent.steps import TrajectoryResult
from heavy.aggregate.citations import filter_claims
from heavy.aggregate.evidence import stemmed_words
from heavy.aggregate.quotes import answer_sentence
from heavy.aggregate.shorten import is_short
from heavy.aggregate.vote import tally
from heavy.llm.types import Usage
from tests.heavy.fakes import source

WALL = source("http://corpus/wall", "长城是中国古代的军事防御工程，全长两万多千米。秦始皇统一六国后修筑了万里长城。"
                                    "长城东起山海关，西至嘉峪关。")
MOSCOW = source("http://corpus/moscow", "Москва — столица России. Кремль находится в центре Москвы.")
TEXTS = {page.url: page.snippet for page in (WALL, MOSCOW)}


def result(index, answer):
    return TrajectoryResult(index=index, answer=answer, confidence=0.5, stop_reason="answered", cited=(),
                            evidence=(), steps=(), usage=Usage(100, 10), temperature=0.0, seed=index)


def test_a_chinese_reports_claims_are_each_checked_against_the_page_they_cite():
    # markers before the full stop, after it, and full-width: each sentence is one claim with its own
    body = "长城全长两万多千米[1]。长城东起山海关。[1]月球是奶酪做的【1】。"
    filtered = filter_claims(body, [WALL], TEXTS, question="长城有多长？")
    assert filtered.body == "长城全长两万多千米[1]。长城东起山海关[1]。"
    assert filtered.dropped == ("月球是奶酪做的[1]。",)


def test_an_invented_russian_sentence_after_a_true_one_is_a_claim_of_its_own():
    filtered = filter_claims("Столица России — Москва [1]. Луна сделана из сыра [1].", [MOSCOW], TEXTS)
    assert filtered.body == "Столица России — Москва [1]."
    assert filtered.dropped == ("Луна сделана из сыра [1].",)


def test_answers_saying_one_thing_in_other_punctuation_or_forms_are_one_answer_and_others_stay_apart():
    answers = ["北京。", "「北京」", "北京", "上海", "Köln", unicodedata.normalize("NFD", "Köln"), "ＮＡＳＡ", "NASA"]
    groups = tally([result(index, answer) for index, answer in enumerate(answers)])
    assert sorted(g.members for g in groups) == [(0, 1, 2), (3,), (4, 5), (6, 7)]


def test_a_chinese_sentence_is_no_short_answer_and_a_short_one_is_shown_with_the_sentence_stating_it():
    assert not is_short("长城位于中国北方，全长两万多千米，是世界上最长的建筑。")
    assert is_short("山海关") and is_short("万里长城")
    question = "长城东起哪里？"
    pages = {1: ("wall", WALL.snippet)}
    assert answer_sentence(question, "山海关", pages, dict.fromkeys(stemmed_words(question), 1.0)) == (
        "长城东起山海关，西至嘉峪关。", 1)
