"""Report mode's verbatim quotes: the fetched pages' sentences that answer the question, picked by their words.

A quote is on its page by construction, so it is the one part of a small model's report no word check can get
wrong; what matters is picking the right sentences. They are picked one at a time, each the sentence worth most:
- a question word counts its rarity over the fetched pages (`question_weights`), and counts too when only the
  sentence's page title or section heading holds it: "It terminates the nearest enclosing loop" is on the page "The
  break statement", and "A continue statement ... continues with the next item" under the heading 'The "for"
  statement';
- a question word the findings or an earlier quote already hold counts COVERED_SHARE: a question of two parts gets a
  quote on each, not three on the part with the most words;
- a page whose title an earlier quote names is the next hop ("directed by Adriana Trigiani" → her page, which says
  where she is based but shares few words with the question), and its sentences gain BRIDGE_SHARE mean words.
Measured against HotpotQA's supporting facts with no model (`scripts/eval_quotes.py`): with 6 quotes from each
question's 10 paragraphs the gold answer is in a quote for 33 of 41 questions, against 27 by words alone.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from heavy.aggregate.evidence import (
    best_sentences,
    quotable_sentences,
    section_headings,
    spoken_name,
    stemmed_words,
    topic_words,
)
from heavy.aggregate.normalize import normalize_answer
from heavy.aggregate.shorten import YES_NO, is_short

# Sums of word weights are math.fsum: a set's order varies between processes (string hashing), and a plain float
# sum in another order can break a tie the other way.
CANDIDATES_PER_PAGE = 6  # each page's sentences richest in the question's words compete for the quotes
COVERED_SHARE = 0.5  # what a question word is worth to the next quote once a quote or the findings hold it
TITLE_SHARE = 1.0  # what a question word only the sentence's page title or section heading holds is worth
BRIDGE_SHARE = 2.0  # in mean question words: what a sentence gains on a page an earlier quote names
QUOTE_FLOOR = 0.5  # a quote is worth at least this share of the best sentence (a next hop's gain counting)
ANSWER_QUOTE_CHARS = 400  # a longer "sentence" stating the answer is a table or a list run together
SAID_OVERLAP = 0.8  # a sentence whose words beyond the question's the findings hold this much of is not quoted
_CUT_MARK = ("…", "...")  # how a search snippet cut from the middle of a page begins and ends
# an interactive session or a grammar rule run into one "sentence" (seen in the demo: a pdb session quoted as where
# the answer "Pdb" is written): code, which a reader checks nothing against
_CODE = re.compile(r">>>|::=")


@dataclass(frozen=True)
class Shares:
    """The picker's weights; scripts/eval_quotes.py compares settings of them side by side."""
    covered: float = COVERED_SHARE
    title: float = TITLE_SHARE
    bridge: float = BRIDGE_SHARE


def pick_quotes(question: str, pages: Mapping[int, tuple[str, str]], weights: Mapping[str, float], count: int,
                said: set[str] = frozenset(), shares: Shares = Shares()) -> list[tuple[str, int]]:
    """Up to `count` sentences of `pages` (source number → (title, text)), each with its source number, best first.
    `said`: the stems of the findings' words. A sentence two pages hold is quoted once (from the first); one whose
    words beyond the question's the findings already hold is not quoted (the question's words are in every finding
    and every relevant sentence alike), and neither is one far less worth than the best ("The Louvre pyramid was
    finished in 1989", for its "finished", to a question on when the Eiffel Tower was)."""
    page_of: dict[str, int] = {}  # sentence → the first source holding it
    framed: dict[str, set[str]] = {}  # sentence → the question's words its page title and section heading hold
    as_dict = dict(weights)
    # the sentences' words: a page's text can hold one sentence in two spellings (its opened Markdown, '"\_"', and
    # a snippet beyond the opened part, '"_"'), which were quoted one after the other
    seen: set[str] = set()
    for n, (title, text) in sorted(pages.items()):
        headings = section_headings(text)
        for sentence in best_sentences(question, text, count=CANDIDATES_PER_PAGE, weights=as_dict):
            words = normalize_answer(sentence)
            # a cut snippet's head or tail is no sentence to quote (seen: a keyword table's cut tail)
            if (words not in seen and not sentence.startswith(_CUT_MARK) and not sentence.endswith(_CUT_MARK)
                    and not _CODE.search(sentence)):
                seen.add(words)
                page_of[sentence] = n
                framed[sentence] = stemmed_words(f"{title} {headings.get(sentence, '')}") & weights.keys()
    holds = {x: stemmed_words(x) & weights.keys() for x in page_of}

    def worth(sentence: str, covered: set[str]) -> float:
        def word(w: str) -> float:
            return weights[w] * (shares.covered if w in covered else 1.0)
        return (math.fsum(word(w) for w in holds[sentence])
                + shares.title * math.fsum(word(w) for w in framed[sentence] - holds[sentence]))

    names = {n: name for n, (title, _) in pages.items() if (name := spoken_name(title))}
    hop = shares.bridge * math.fsum(weights.values()) / max(len(weights), 1)
    alone = {x: worth(x, set()) for x in page_of}
    floor = QUOTE_FLOOR * max(alone.values(), default=0.0)
    left = [x for x in page_of if not _already_said(x, said, weights)]
    covered, picked = set(said) & weights.keys(), []
    while left and len(picked) < count:
        quoted = f" {' '.join(normalize_answer(x) for x, _ in picked)} "
        named = {n for n, name in names.items() if f" {name} " in quoted} - {n for _, n in picked}
        gain = {x: hop * (page_of[x] in named) for x in left}
        eligible = [x for x in left if alone[x] + gain[x] >= floor]
        if not eligible:
            break
        best = max(eligible, key=lambda x: (worth(x, covered) + gain[x], -page_of[x]))
        left.remove(best)
        covered |= holds[best]
        picked.append((best, page_of[best]))
    return picked


def _already_said(sentence: str, said: set[str], weights: Mapping[str, float]) -> bool:
    added = topic_words(sentence) - weights.keys()
    return bool(said) and len(added & said) >= SAID_OVERLAP * len(added)


def answer_sentence(question: str, answer: str, pages: Mapping[int, tuple[str, str]], weights: Mapping[str, float],
                    ) -> tuple[str, int] | None:
    """The sentence of `pages` (source number → (title, text)) that writes `answer` out, as whole words, and holds
    the most of the question's rarer words (its page title's and section heading's too), with its source number:
    where a reader checks the answer. Only for a short answer: a yes or no is written in no sentence, and an answer
    in sentences is its own quote or none."""
    needle = normalize_answer(answer)
    if not needle or needle in YES_NO or not is_short(answer):
        return None
    found = []
    for n, (title, text) in sorted(pages.items()):
        headings = section_headings(text)
        for sentence in quotable_sentences(text):
            if (len(sentence) <= ANSWER_QUOTE_CHARS and not _CODE.search(sentence)
                    and f" {needle} " in f" {normalize_answer(sentence)} "):
                words = stemmed_words(f"{sentence} {title} {headings.get(sentence, '')}") & weights.keys()
                found.append((math.fsum(weights[w] for w in words), -n, sentence))
    if not found or max(found)[0] == 0:  # a sentence naming the answer and nothing of the question shows nothing
        return None
    _, n, sentence = max(found, key=lambda item: item[:2])  # ties: the first page, then its first sentence
    return sentence, -n
