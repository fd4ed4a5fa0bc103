"""The evidence all trajectories gathered, pooled and ranked, for the judge to read.

Eight trajectories of a weak model rarely agree, but between them they usually fetched the pages that hold the
answer. A page ranks higher the more of the question's rarer words it holds (IDF over the pooled pages), when it
contains one of the candidate answers, and when it is the page of something the question names (all its title's
words are in the question: the "Buck-Tick" page beats a page that only mentions Buck-Tick). Pages are picked one at
a time, and a question word counts only on the first page picked that holds it: a two-part question ("were X and Y
...", "the director of Z ...") gets a page on each part instead of four on the part with the most words. A page
whose title a picked page names ranks up too: it is the next hop ("the arena where the Maineiacs played" → the
arena's page), which shares few words with the question. On the HotpotQA eval this puts both gold paragraphs among
the judge's 4 pages more often than ranking every page on all the question's words (see docs/eval_hotpotqa.md).
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import snowballstemmer

from heavy.agent.gathered import PARAGRAPH_BREAK, merged_text, unescaped
from heavy.agent.steps import TrajectoryResult
from heavy.aggregate.normalize import normalize_answer
from heavy.aggregate.sources import source_key, union_of_sources
from heavy.corpus import cjk

# How many trajectories fetched or cited a page is not counted, not even to break ties: they all start from the same
# opening search, so counts favour its results over the page one trajectory found on its second hop, which in
# multi-hop questions holds the answer (measured: counting them lost both gold pages from the judge's 4 on 3 of 30).
BRIDGE_WEIGHT = 2.0  # the page's title is named in a page already picked: the second hop of a bridge question
TITLE_WEIGHT = 2.0  # the page's title names something the question names
CANDIDATE_WEIGHT = 1.5  # the page contains one of the trajectories' answers
_WORD = re.compile(r"\w+")
_QUALIFIER = re.compile(r"\(.*?\)")
# the words of a question that say what kind of answer it wants, not what the answer is about
_QUESTION_WORDS = frozenset({"what", "which", "who", "whom", "whose", "when", "where", "why", "how", "does", "did",
                             "the", "and", "with", "are", "was", "were", "has", "have", "had", "that", "this",
                             "inside", "from", "into"})
_STEMMERS = threading.local()  # a Snowball stemmer keeps state between calls: one per thread
PASSAGE_SENTENCES = 3  # a claim is checked against this many consecutive sentences of a page, not the whole page
# also before **bold**, as Markdown bodies have; not after an ellipsis ("the 'try' ... 'except' statement")
_HEADING = re.compile(r"^#|://|={3,}|-{3,}|\*{3,}")  # Markdown and underlined (=, -, *) headings, "URL: ..." lines
# a paragraph that is a section's heading: "## The for statement", or "The for statement" underlined (=, -, *), which
# the underline folds into one line when a page's paragraph joins them
_SECTION_HEADING = re.compile(r"^#{1,6}\s+(?P<marked>.{1,120})$|^(?P<underlined>.{1,120}?)\s+(?:={3,}|-{3,}|\*{3,})$")
_NEGATION = re.compile(r"\b(?:not|no|never|none|neither|nor|cannot|without)\b|n[’']t\b", re.IGNORECASE)
NEGATED = "<not>"  # in a passage's words when it negates something; no word can be it (words are \w+)
# not after an initial ("C. Robert Cargill", "U.S. Army"), a title ("Dr. Strange") or "No."/"Vol." ("reached No. 1"):
# names and numbers go on there. The next sentence starts with a capital of any script or a letter of one without case
# (Arabic, Hebrew, Devanagari): "Столица России — Москва [2]. Луна сделана из сыра [2]." was one claim, its invented
# half kept on the words of the true one. Chinese and Japanese end a sentence with "。", "！" or "？" and no space (not
# inside a quotation, "「…。」", nor before a footnote or marker, "。[1]": markers.as_markers moves a report's).
CJK_STOPS = ("。", "！", "？")
_CASED_LOWER = "".join(chr(c) for c in range(0x80, 0x10000) if chr(c).islower())
SENTENCE_END = re.compile(r"(?<=[.!?])(?<!\.\.\.)(?<![\s(.][A-Z]\.)(?<!\b(?:Mr|Dr|St|Jr|Sr|Mt|No)\.)"
                          r"(?<!\b(?:Mrs|Nos|Vol)\.)\s+(?=[A-Z0-9\"'(*]|(?![a-z_" + _CASED_LOWER + r"])[^\W\d])"
                          r"|(?<=[" + "".join(CJK_STOPS) + r"])\s*(?=[^\s」』）)”’】\]\[【])")


@dataclass(frozen=True)
class Passage:
    url: str
    title: str
    text: str
    score: float


def content_words(text: str) -> set[str]:
    """The words of three or more characters, lowercased, and the bigrams of CJK runs: what overlap between texts is
    measured in. Chinese and Japanese write no spaces, so a run of them was one "word", a sentence long, that no
    other text held: every claim of a Chinese report was dropped. A bigram is about a word (heavy/corpus/cjk.py)."""
    return {w for w in _WORD.findall(cjk.shadow_text(unescaped(text).lower()))
            if len(w) > 2 or len(w) == 2 and cjk.has_cjk(w)}


def fetched_texts(results: Sequence[TrajectoryResult]) -> dict[str, str]:
    """url → all the trajectories saw of it: the longest text any of them kept, and what others saw beyond it. The
    URLs are the union's (`union_of_sources`): one per `source_key`, the spelling seen first."""
    shown = _shown_urls(results)
    seen: dict[str, list[str]] = {}
    for result in results:
        for source in result.evidence:
            seen.setdefault(shown[source_key(source.url)], []).append(result.excerpts.get(source.url) or source.snippet)
    texts = {}
    for url, views in seen.items():
        texts[url] = ""
        for view in sorted(views, key=len, reverse=True):
            texts[url] = merged_text(texts[url], view)
    return texts


def _shown_urls(results: Sequence[TrajectoryResult]) -> dict[str, str]:
    """`source_key` → the URL the union shows for it."""
    return {source_key(s.url): s.url for s in union_of_sources(results)}


def pooled_passages(question: str, results: Sequence[TrajectoryResult], candidates: Sequence[str] = (),
                    k: int = 4, max_chars: int = 700) -> list[Passage]:
    """The k best pages over every trajectory's evidence, each cut to `max_chars`."""
    texts = fetched_texts(results)
    shown = _shown_urls(results)
    titles = {shown[source_key(source.url)]: source.title for result in results for source in result.evidence}
    if not texts:
        return []
    page_words = {url: content_words(titles[url] + " " + text) for url, text in texts.items()}
    document_frequency = Counter(w for words in page_words.values() for w in words)
    idf = {w: math.log(1 + len(texts) / df) for w, df in document_frequency.items()}
    asked = content_words(question)
    wanted = [normalize_answer(c) for c in candidates if normalize_answer(c)]
    flat = {url: f" {normalize_answer(text)} " for url, text in texts.items()}
    holds_candidate = {url: any(f" {c} " in flat[url] for c in wanted) for url in texts}
    spoken = {url: spoken_name(titles[url]) for url in texts}  # as another page's text would name it
    named = {url: bool(words := content_words(_QUALIFIER.sub(" ", titles[url]))) and words <= asked for url in texts}
    passages, covered, left = [], set(), list(texts)  # first-fetched order breaks ties
    picked_text = ""
    while left and len(passages) < k:
        gains = [math.fsum(idf[w] for w in (asked & page_words[url]) - covered)
                 + CANDIDATE_WEIGHT * holds_candidate[url] + TITLE_WEIGHT * named[url]
                 + BRIDGE_WEIGHT * (bool(spoken[url]) and f" {spoken[url]} " in picked_text) for url in left]
        best = max(range(len(left)), key=gains.__getitem__)
        url = left.pop(best)
        covered |= asked & page_words[url]
        picked_text += flat[url]
        passages.append(Passage(url=url, title=titles[url], text=" ".join(texts[url].split())[:max_chars],
                                score=gains[best]))
    return passages


def spoken_name(title: str) -> str:
    """What a page's title names, as another page's text would name it, normalised: "Hayden (musician)" → "hayden"."""
    return normalize_answer(_QUALIFIER.sub(" ", title))


def token_f1(a: str, b: str, restated: str = "") -> float:
    """Token overlap of two answers after normalisation (the HotpotQA/SQuAD F1). Words of `restated` (the
    question) do not count when both answers say more than it: "The woman who played X was Shirley Temple" and
    "The woman who played X was a judge" share the question, not the answer."""
    x, y = normalize_answer(a).split(), normalize_answer(b).split()
    asked = set(normalize_answer(restated).split())
    if [w for w in x if w not in asked] and [w for w in y if w not in asked]:
        x, y = [w for w in x if w not in asked], [w for w in y if w not in asked]
    same = sum((Counter(x) & Counter(y)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(x), same / len(y)
    return 2 * precision * recall / (precision + recall)



def sentences_of(text: str) -> list[str]:
    """The text's sentences, whitespace folded; a paragraph break ends one too (a heading or a grammar block ends
    where its paragraph does)."""
    return [x.strip() for paragraph in PARAGRAPH_BREAK.split(text)
            for x in SENTENCE_END.split(" ".join(paragraph.split())) if x.strip()]


def section_headings(text: str) -> dict[str, str]:
    """Each sentence of `text` (as `sentences_of` writes it) → the heading of the section it stands in, "" before the
    first: a sentence is about its section's subject as it is about its page's ("A continue statement executed in
    the first suite skips the rest of the suite" under 'The "for" statement')."""
    heading, under = "", {}
    for paragraph in PARAGRAPH_BREAK.split(text):
        if found := _SECTION_HEADING.match(" ".join(paragraph.split())):
            heading = found["marked"] or found["underlined"]
        else:
            under.update((sentence, heading) for sentence in sentences_of(paragraph) if sentence not in under)
    return under


def stems(words: Iterable[str]) -> set[str]:
    """The words' Snowball (Porter 2) stems: "statements" and "statement" are one word, "skips" and "skipped" too.
    Both sides of a comparison must go through it."""
    return {_stem(w) for w in words}


@lru_cache(maxsize=1 << 16)  # pages repeat their words, and stemming one in pure Python takes ~0.1 ms
def _stem(word: str) -> str:
    if (stemmer := getattr(_STEMMERS, "english", None)) is None:
        stemmer = _STEMMERS.english = snowballstemmer.stemmer("english")
    return stemmer.stemWord(word)


def stemmed_words(text: str) -> set[str]:
    """The stems of the text's content words."""
    return stems(content_words(text))


_QUESTION_STEMS = stems(_QUESTION_WORDS)


def negates(text: str) -> bool:
    """Whether the text says "not" in some form ("no", "never", "without", "doesn't", ...)."""
    return bool(_NEGATION.search(text))


def topic_words(text: str) -> set[str]:
    """The stems of the text's content words, interrogatives and function words aside: what it is about."""
    return stemmed_words(text) - _QUESTION_STEMS


def passages(text: str, window: int = PASSAGE_SENTENCES) -> list[str]:
    """Each run of `window` consecutive sentences of the text: where a claim must find its words, since a long page
    holds most words somewhere."""
    sentences = sentences_of(text)
    return [" ".join(sentences[i:i + window]) for i in range(max(1, len(sentences) - window + 1))]


def passage_words(text: str, window: int = PASSAGE_SENTENCES) -> list[set[str]]:
    """The stemmed content words of each of the text's `passages`; a passage that negates something also holds
    NEGATED."""
    return [stemmed_words(run) | ({NEGATED} if negates(run) else set()) for run in passages(text, window)]


def question_weights(question: str, texts: Sequence[str]) -> dict[str, float]:
    """The stems of the question's content words (its own interrogatives and function words aside), each weighted by
    its rarity over `texts` (IDF): a word every page holds ("python" in a corpus of Python pages) tells a page's
    sentences apart no better than none, and a rare "what" in a question says nothing of the answer."""
    asked = stemmed_words(question) - _QUESTION_STEMS
    pages = [stemmed_words(text) for text in texts]
    return {w: math.log(1 + len(pages) / (1 + sum(w in page for page in pages))) for w in asked}


def weigh(text: str, weights: dict[str, float]) -> float:
    """How much of the question's weighted words (stems) `text` holds."""
    return math.fsum(weights.get(w, 0.0) for w in stemmed_words(text))


def written_words(text: str) -> int:
    """How many words `text` writes, punctuation aside; a CJK run, written without spaces, counts one per two
    characters (about a Chinese word's length): a Chinese sentence was one word, never long, never quotable."""
    runs = cjk.CJK_RUN.findall(text)
    others = [w for w in cjk.CJK_RUN.sub(" ", text).split() if not runs or any(c.isalnum() for c in w)]
    return len(others) + sum(-(-len(run) // 2) for run in runs)


def quotable_sentences(text: str) -> list[str]:
    """The text's sentences of four words or more, each once (a page's sections often repeat one); headings, the
    tools' "URL:" header lines and lines leading into a list ("Results for 'Eenasul Fateh':") are no sentences."""
    return list(dict.fromkeys(x for x in sentences_of(text)
                              if written_words(x) >= 4 and not _HEADING.search(x) and not x.endswith(":")))


def best_sentences(question: str, text: str, count: int | None = 2, weights: dict[str, float] | None = None,
                   max_chars: int | None = None) -> list[str]:
    """The sentences of `text` that hold the most of the question's words (by `weights`, else each word 1), up to
    `count` of them (None: any number) and `max_chars` in all, in the text's order. A sentence with none of them is
    never picked, and one the text repeats is picked once (`quotable_sentences`)."""
    weights = weights if weights is not None else dict.fromkeys(stemmed_words(question) - _QUESTION_STEMS, 1.0)
    sentences = quotable_sentences(text)
    scores = [weigh(x, weights) for x in sentences]
    picked, room = [], max_chars if max_chars is not None else float("inf")
    for i in sorted(range(len(sentences)), key=lambda i: -scores[i]):
        if len(picked) == count or scores[i] <= 0:
            break
        if len(sentences[i]) <= room:
            picked.append(i)
            room -= len(sentences[i]) + 1
    return [sentences[i] for i in sorted(picked)]
