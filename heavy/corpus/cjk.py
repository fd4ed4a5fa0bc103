"""Chinese, Japanese and Korean text as overlapping bigrams, so FTS5 can find words inside a run of CJK characters.

FTS5's unicode61 tokenizer splits at spaces and punctuation, and these scripts write a sentence as one unbroken run:
"東京は日本の首都です" was one token, found by that whole run only, never by 東京 or 首都. As search engines without
a dictionary do, a run is indexed as its overlapping bigrams ("東京 京は は日 ..."), plus its last character alone, so
that every character begins a token and a one-character query can match as a prefix. A query is searched the same
way: each of its runs as its bigrams, OR-ed, so BM25 ranks a page by how many of them it holds.
"""

from __future__ import annotations

import re

from heavy.corpus.snippets import term_places, window_snippet

# Han (with extensions and compatibility ideographs), kana (half-width too), Hangul syllables, 々〆〇
CJK_RUN = re.compile(
    "[\u3005-\u3007\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f"
    "\U00020000-\U0003134f]+"
)


def has_cjk(text: str) -> bool:
    return CJK_RUN.search(text) is not None


def _run_tokens(run: str) -> list[str]:
    return [run[k:k + 2] for k in range(len(run) - 1)] + [run[-1]]


def shadow_text(text: str) -> str:
    """`text` with every CJK run replaced by its tokens (see the module doc); everything else as written."""
    return CJK_RUN.sub(lambda m: f" {' '.join(_run_tokens(m.group()))} ", text)


def spaced(text: str) -> str:
    """`text` with each CJK character a word of its own, as whole-word comparisons need: "北京" is then found in
    "长城在北京附近" as " 北 京 " in " 长 城 在 北 京 附 近 "."""
    return CJK_RUN.sub(lambda m: f" {' '.join(m.group())} ", text)


def query_terms(query: str) -> tuple[str, list[str]]:
    """The query without its CJK runs, and the runs' FTS5 terms: each bigram quoted, a lone character as a prefix."""
    terms = []
    for run in CJK_RUN.findall(query):
        bigrams = _run_tokens(run)[:-1]
        terms += [f'"{gram}"' for gram in bigrams] if bigrams else [f'"{run}"*']
    return CJK_RUN.sub(" ", query), list(dict.fromkeys(terms))


def snippet(text: str, query: str) -> str:
    """About SNIPPET_CHARS of `text` where the most of the query's CJK terms are (snippets.window_snippet). The terms
    are those searched: a run's bigrams, a one-character run itself (a lone last character would be found in any
    other word holding it)."""
    terms = [gram for run in CJK_RUN.findall(query) for gram in (_run_tokens(run)[:-1] or [run])]
    return window_snippet(text, term_places(text, terms))
