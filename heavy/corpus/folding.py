"""Unicode compatibility folding (NFKC) of what the index searches: a page's text as indexed and a query.

Text typed with a Japanese IME writes Latin in full-width forms (ＰＹＴＨＯＮ), older Japanese text katakana in
half-width ones (ｶﾀｶﾅ), PDF extractions keep ligatures (ﬁnance), macOS text kana decomposed (カ + U+3099 for ガ):
FTS5's unicode61 tokenizer folds none of these, so each was found only by a query written the same way (nor Arabic
letters with their vowel marks, nor Russian ё: see _LETTER_FORMS). The index
stores and shows a page as written; only its FTS5 and bigram tables hold the folded text.
"""

from __future__ import annotations

import re
import unicodedata

_SYMBOL = re.compile(r"[^\w\s]")
# Letters written two ways that readers take for one, folded as search engines do (Lucene's Arabic normaliser, ICU's
# folding): Arabic's short vowels and other marks (تشكيل) and tatweel left out, its alef with hamza or madda as alef,
# alef maksura as yeh, teh marbuta as heh; Russian ё as е. FTS5 read each Arabic mark as a space, so a vowelled
# "كَتَبَ" was indexed as the letters ك ت ب, never found by the word as usually written ("كتب"), nor "ёлка" by "елка".
_LETTER_FORMS = {**dict.fromkeys([*range(0x064B, 0x0660), 0x0670, 0x0640]), ord("أ"): "ا", ord("إ"): "ا",
                 ord("آ"): "ا", ord("ى"): "ي", ord("ة"): "ه", ord("ё"): "е", ord("Ё"): "Е"}
_HAS_LETTER_FORM = re.compile("[" + "".join(map(chr, _LETTER_FORMS)) + "]")


def fold(text: str) -> str:
    """`text` as searched: `nfkc_folded`, then one form of the letters written two ways (_LETTER_FORMS)."""
    if not _HAS_LETTER_FORM.search(text):
        return nfkc_folded(text)
    return unicodedata.normalize("NFKC", nfkc_folded(text).translate(_LETTER_FORMS))


def nfkc_folded(text: str) -> str:
    """`text` in NFKC form, a symbol that folds to letters or digits a word of its own: "Java™" is "Java TM ", not
    "JavaTM" (FTS5 read ™ as a space, so java found it before folding, and must still). An index of schema 3 or 4
    holds its documents folded so, and is searched so."""
    if unicodedata.is_normalized("NFKC", text):
        return text
    return unicodedata.normalize("NFKC", _SYMBOL.sub(_symbol_as_word, text))


def _symbol_as_word(symbol: re.Match[str]) -> str:
    folded = unicodedata.normalize("NFKC", symbol.group())
    return f" {folded} " if any(char.isalnum() for char in folded) else symbol.group()


def fold_with_places(text: str) -> tuple[str, list[int] | None]:
    """`text` folded, and where in `text` each folded character came from (None: folding changed nothing). A
    character and the combining marks after it are folded together (a decomposed ガ is one), so a place found in the
    folded text maps back to the written one."""
    if unicodedata.is_normalized("NFKC", text) and not _HAS_LETTER_FORM.search(text):
        return text, None
    clusters: list[tuple[int, str]] = []
    for at, char in enumerate(text):
        if clusters and unicodedata.combining(char):
            clusters[-1] = (clusters[-1][0], clusters[-1][1] + char)
        else:
            clusters.append((at, char))
    folded = [(at, fold(cluster)) for at, cluster in clusters]
    return "".join(piece for _, piece in folded), [at for at, piece in folded for _ in piece]


def tokenized_as_written(text: str) -> bool:
    """Whether `text` folded splits into the same tokens at the same places as written: each character folds to one,
    a letter or digit to one (² to 2), any other to any other (U+00A0 to a space). FTS5's snippet() reads a page as
    written and places the hits the index found in the folded one by their token numbers: "1½" folds to "11⁄2", two
    tokens, and every hit after it was shown a token early."""
    if unicodedata.is_normalized("NFKC", text) and not _HAS_LETTER_FORM.search(text):
        return True
    folded = fold(text)
    return len(folded) == len(text) and all(a.isalnum() == b.isalnum() for a, b in zip(text, folded, strict=True))
