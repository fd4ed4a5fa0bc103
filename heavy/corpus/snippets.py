"""Snippets the index writes itself, where FTS5's snippet() cannot serve: a CJK hit's (FTS5 sees its runs as one
token each) and a huge page's. FTS5 weighs every fragment against every hit of the query in the page: a page holding
a query word 20,000 times took 6.5 s to write a snippet for, 600,000 times (a 21 MB page) over ten minutes, each
search it was a hit of, while the search tool's call timed out and its thread went on."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Iterable, Iterator

import regex

from heavy.corpus.folding import fold_with_places
from heavy.graphemes import widened

SNIPPET_BEFORE = 40  # characters shown before the window's first query term
SNIPPET_CHARS = 200
SCAN_PLACES = 2_000  # of each query term, the places looked at: its first (a huge page may hold it 100,000 times)
LONG_PAGE_CHARS = 100_000  # a page longer than this gets `words_snippet`, not FTS5's (at most about 2 s here)
FTS_ELLIPSIS = " … "  # what FTS5's snippet() writes where it cut the text
MARKED_LETTER = regex.compile(r"\p{L}\p{M}")


def window_snippet(text: str, places: Iterable[tuple[int, str]]) -> str:
    """About SNIPPET_CHARS of `text` where the most distinct query terms are, the first such window if several (as
    FTS5 picks its fragment). `places`: where each term was found (its start in `text`, the term)."""
    places = sorted(places)
    terms = len({term for _, term in places})
    held: Counter[str] = Counter()
    best, best_at, right = 0, 0, 0
    for at, term in places:  # a window from each place: the terms inside it, held
        while right < len(places) and places[right][0] + len(places[right][1]) <= at + SNIPPET_CHARS - SNIPPET_BEFORE:
            held[places[right][1]] += 1
            right += 1
        if len(held) > best:
            best, best_at = len(held), at
            if best == terms:
                break
        held[term] -= 1
        if not held[term]:
            del held[term]
    start = max(0, best_at - SNIPPET_BEFORE)
    start, end = widened(text, start, start + SNIPPET_CHARS)  # never half a letter with accents, a flag or an emoji
    return f"{' … ' if start else ''}{' '.join(text[start:end].split())}{' … ' if end < len(text) else ''}"


def whole_graphemes(snippet: str, text: str) -> str:
    """FTS5's `snippet` of `text` with the marks its last letter carries: unicode61 reads a mark (Devanagari's and
    Thai's vowel signs, Hebrew's points) as a separator, and the snippet ended before it, cutting a letter from its
    vowel ("… दुन" of "दुनिया")."""
    core = snippet.removeprefix(FTS_ELLIPSIS).removesuffix(FTS_ELLIPSIS)
    at = text.find(core)
    if at < 0 or not core:
        return snippet
    end = widened(text, at, at + len(core))[1]
    return snippet.replace(core, text[at:end], 1)


def may_cut_a_grapheme(snippet: str) -> bool:
    """Whether FTS5's `snippet` is of text whose letters carry marks, which it may have cut off (`whole_graphemes`)."""
    return MARKED_LETTER.search(snippet) is not None


def term_places(text: str, terms: Iterable[str]) -> list[tuple[int, str]]:
    """Where each of `terms` (folded, as a query is) is in `text`, found in its folded form (the first SCAN_PLACES of
    each; they may overlap)."""
    folded, written_at = fold_with_places(text)
    return [(written_at[at] if written_at else at, term)
            for term in set(terms) for at in itertools.islice(_find_all(folded, term), SCAN_PLACES)]


def _find_all(text: str, term: str) -> Iterator[int]:
    at = text.find(term)
    while at >= 0:
        yield at
        at = text.find(term, at + 1)


def words_snippet(text: str, words: Iterable[str]) -> str:
    """A long page's snippet: the window with the most of the query's `words`, each found as the start of a word in
    any case (near FTS5's stemmed, case-folded match: "volcano" finds "Volcanoes"), in its folded form (as
    `term_places`)."""
    folded, written_at = fold_with_places(text)
    places = [(written_at[m.start()] if written_at else m.start(), word) for word in {word.lower() for word in words}
              for m in itertools.islice(re.finditer(rf"\b{re.escape(word)}", folded, re.IGNORECASE), SCAN_PLACES)]
    return window_snippet(text, places)
