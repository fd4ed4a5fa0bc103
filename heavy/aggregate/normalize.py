"""Answer normalisation as in the official HotpotQA/SQuAD evaluation: lowercase, drop punctuation, the articles
a/an/the, and extra whitespace. Votes compare answers by `vote_key`, the same form with typographic dashes and quotes
folded first (the official form keeps "–" and "’", so "1903–1912" and "1903-1912" would be two answers) and plurals
made singular."""

from __future__ import annotations

import html
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable

from heavy.corpus import cjk

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """The official form; a CJK character is a word of its own (cjk.spaced), so that an answer is found as whole words
    in a sentence of a language written without spaces."""
    text = "".join(ch for ch in cjk.spaced(text).lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


_TYPOGRAPHIC = str.maketrans({"–": "-", "—": "-", "‐": "-", "‑": "-", "‒": "-", "−": "-", "’": "'", "‘": "'",
                              "“": '"', "”": '"'})


def vote_key(text: str) -> str:
    """The official form with typographic marks folded and each word's plural or possessive "s" dropped: seen at
    n=8, two readings "Yellowcraig" and two "Yellowcraigs" were two answers, and both lost to a third. Also in NFKC
    form without punctuation of any script (the official form drops ASCII's only): "北京。", "「北京」" and "北京",
    "ＮＡＳＡ" and "NASA", "Köln" composed and decomposed were each two or three answers."""
    folded = unicodedata.normalize("NFKC", typographic_folded(text))
    unpunctuated = "".join(ch for ch in folded if not unicodedata.category(ch).startswith("P"))
    return " ".join(_singular(word) for word in normalize_answer(unpunctuated).split())


def typographic_folded(text: str) -> str:
    """Typographic dashes, quotes and apostrophes as their ASCII forms, which the official normalisation drops."""
    return text.translate(_TYPOGRAPHIC)


def _singular(word: str) -> str:
    """"yellowcraigs" → "yellowcraig", "mangnalls" (from "Mangnall's") → "mangnall"; "chess", "1990s" and short
    words ("bus", "is") stay."""
    plural = len(word) > 3 and word.isalpha() and word.endswith("s") and not word.endswith("ss")
    return word[:-1] if plural else word


_UNDERLINE = re.compile(r"^\s*([=\-*~^#])\1{2,}\s*$")  # a heading's underline (reST, Markdown), or a rule
_HASH_HEADING = re.compile(r"^\s{0,3}#{1,6}\s")


def plain_answer(text: str) -> str:
    """An answer as written plainly: HTML entities unescaped (one copied from an escaped title, "Tunnels &amp;
    Trolls", is the same answer), a page's headings copied with it dropped, surrounding space dropped. Every answer
    and reading passes here before any check."""
    return without_headings(html.unescape(text)).strip()


def without_headings(text: str) -> str:
    """Text less the section headings a model copied from a page: an underlined heading with its underline, a
    "## heading" line, a rule. Seen in a report's headline answer to a question on the continue statement:
    "The 'break' statement" above a row of asterisks, the end of the previous section of Python's reference."""
    lines, kept = text.splitlines(), []
    for line in lines:
        if _UNDERLINE.match(line):
            if kept and kept[-1].strip():
                kept.pop()  # the heading it underlines
            continue
        if not _HASH_HEADING.match(line):
            kept.append(line)
    return "\n".join(kept) if len(kept) != len(lines) else text  # untouched when it has none


def as_sources_write(answer: str, texts: Iterable[str]) -> str:
    """The answer as the fetched pages most often write it, among the forms that vote with it (plural or singular):
    a small model's "Yellowcraigs" where the pages write "Yellowcraig" is shown as they write it. A possessive is no
    form ("Scotch Collie's" is "Scotch Collie"); the answer stays as given when its own form is among the most
    written (seen at n=8: "Yellowcraigs" stays, the pages write it as often as "Yellowcraig", 4 times each), when
    the pages never mention it, or when a word of it is not alphabetic."""
    words = vote_key(answer).split()
    if not words or not all(word.isalpha() for word in words):
        return answer
    pattern = re.compile(r"\b" + r"\s+".join(re.escape(w) + r"s?" for w in words) + r"\b", re.IGNORECASE)
    written = Counter(" ".join(m.group(0).split()) for text in texts for m in pattern.finditer(text))
    by_form = Counter()  # normalised form -> how often the pages write it
    for form, count in written.items():
        by_form[normalize_answer(form)] += count
    if not by_form or by_form[normalize_answer(answer)] == max(by_form.values()):
        return answer
    top = max(by_form, key=lambda form: (by_form[form], -len(form), form))
    return max((f for f in written if normalize_answer(f) == top), key=lambda f: (written[f], f))
