"""The evidence all trajectories gathered, pooled and ranked, for the judge to read.

Eight trajectories of a weak model rarely agree, but between them they usually fetched the pages that hold the
answer. A page ranks higher the more of the question's rarer words it holds (IDF over the pooled pages), the more
trajectories fetched or cited it (with diminishing returns), and when it contains one of the candidate answers.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from heavy.agent.steps import TrajectoryResult
from heavy.aggregate.normalize import normalize_answer

# Counts enter as log2(1 + count): all trajectories see the results of the same opening search, so a linear count
# would bury the page one trajectory found on its second hop, which in multi-hop questions holds the answer.
FETCHED_WEIGHT = 0.5
CITED_WEIGHT = 1.0
CANDIDATE_WEIGHT = 1.5  # the page contains one of the trajectories' answers
_WORD = re.compile(r"\w+")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(*])")  # also before **bold**, as Markdown bodies have


@dataclass(frozen=True)
class Passage:
    url: str
    title: str
    text: str
    score: float


def content_words(text: str) -> set[str]:
    """The words of three or more characters, lowercased: what overlap between texts is measured in."""
    return {w for w in _WORD.findall(text.lower()) if len(w) > 2}


def fetched_texts(results: Sequence[TrajectoryResult]) -> dict[str, str]:
    """url → the longest text any trajectory fetched of it (the page read whole, else its search snippet)."""
    texts: dict[str, str] = {}
    for result in results:
        for source in result.evidence:
            text = result.excerpts.get(source.url) or source.snippet
            if len(text) > len(texts.get(source.url, "")):
                texts[source.url] = text
    return texts


def pooled_passages(question: str, results: Sequence[TrajectoryResult], candidates: Sequence[str] = (),
                    k: int = 4, max_chars: int = 700) -> list[Passage]:
    """The k best pages over every trajectory's evidence, each cut to `max_chars`."""
    texts = fetched_texts(results)
    titles: dict[str, str] = {}
    fetched: Counter[str] = Counter()
    cited: Counter[str] = Counter()
    for result in results:
        for source in result.evidence:
            titles[source.url] = source.title
            fetched[source.url] += 1
        cited.update({s.url for s in result.cited})
    if not texts:
        return []
    page_words = {url: content_words(titles[url] + " " + text) for url, text in texts.items()}
    document_frequency = Counter(w for words in page_words.values() for w in words)
    idf = {w: math.log(1 + len(texts) / df) for w, df in document_frequency.items()}
    asked = content_words(question)
    wanted = [normalize_answer(c) for c in candidates if normalize_answer(c)]
    passages = []
    for url, text in texts.items():
        score = sum(idf[w] for w in asked & page_words[url])
        score += FETCHED_WEIGHT * math.log2(1 + fetched[url]) + CITED_WEIGHT * math.log2(1 + cited[url])
        flat = normalize_answer(text)
        score += CANDIDATE_WEIGHT * any(f" {c} " in f" {flat} " for c in wanted)
        passages.append(Passage(url=url, title=titles[url], text=" ".join(text.split())[:max_chars], score=score))
    return sorted(passages, key=lambda p: -p.score)[:k]


def token_f1(a: str, b: str) -> float:
    """Token overlap of two answers after normalisation (the HotpotQA/SQuAD F1)."""
    x, y = normalize_answer(a).split(), normalize_answer(b).split()
    same = sum((Counter(x) & Counter(y)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(x), same / len(y)
    return 2 * precision * recall / (precision + recall)



def best_sentences(question: str, text: str, count: int = 2) -> list[str]:
    """The `count` sentences of `text` sharing most words with the question, in the text's order."""
    asked = content_words(question)
    sentences = [x.strip() for x in SENTENCE_END.split(" ".join(text.split())) if len(x.split()) >= 4]
    ranked = sorted(range(len(sentences)), key=lambda i: -len(asked & content_words(sentences[i])))[:count]
    return [sentences[i] for i in sorted(ranked)]
