"""Cutting text between graphemes, what a reader sees as one character (a letter and its accents, a flag, an emoji
family joined by U+200D), never inside one: a cut by code points showed "e" for "é", a man for a family, half a flag."""

from __future__ import annotations

import unicodedata

import regex

GRAPHEME = regex.compile(r"\X")
LONGEST_GRAPHEME = 32  # code points looked past a cut for the end of its grapheme (an emoji family is 7, a flag 2)


def clipped(text: str, chars: int) -> str:
    """The longest start of `text` of at most `chars` code points that ends between two graphemes."""
    if len(text) <= chars:
        return text
    end = 0
    for grapheme in GRAPHEME.finditer(text, 0, chars + LONGEST_GRAPHEME):
        if grapheme.end() > chars:
            break
        end = grapheme.end()
    return text[:end]


def widened(text: str, start: int, end: int) -> tuple[int, int]:
    """`text[start:end]` widened to whole graphemes: `start` back to the start of its grapheme, `end` on to the end of
    the grapheme it cuts."""
    anchor = start  # a place a grapheme surely starts at, to read them from
    while anchor > 0 and start - anchor < LONGEST_GRAPHEME and _may_continue(text, anchor):
        anchor -= 1
    for grapheme in GRAPHEME.finditer(text, anchor, min(len(text), end + LONGEST_GRAPHEME)):
        if grapheme.start() <= start < grapheme.end():
            start = grapheme.start()
        if grapheme.start() < end < grapheme.end():
            return start, grapheme.end()
        if grapheme.end() >= end:
            break
    return start, end


def _may_continue(text: str, at: int) -> bool:
    """Whether the character at `at` may belong to the grapheme before it: a mark, a joiner or what a joiner joins, a
    format or modifier character, a regional indicator (flags are pairs of them)."""
    char = text[at]
    return (not char.isascii() and (unicodedata.category(char)[0] in "MCS" or "\U0001f1e6" <= char <= "\U0001f1ff")
            or text[at - 1] == "\u200d")
