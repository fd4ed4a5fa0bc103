"""A report's citation markers, `[n]`: reading them (also written "[1-3]" or "【1】"), renumbering them, and
keeping what only looks like one (a page's footnote quoted, an index in code) from being taken for one."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Sequence

from heavy.agent.gathered import unescaped

# what Markdown reads anywhere in a line: emphasis, code, links and markers, autolinks, entities, table cells,
# strikethrough (the terminal's renderer), a heading's closing "#"
_INLINE_SPECIAL = re.compile(r"[\\`*_\[\]<>&|~#]")
# what it reads at a line's start only: a list item ("- ", "+ ", "1889. ", "1) "), a setext underline ("==="); a line's
# indentation would make it code
_BLOCK_START = re.compile(r"^[ \t]*(?:([-+=])|(\d{1,9})([.)]))?", re.MULTILINE)
_LINK_TARGET_SAFE = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in "()<>\\")  # "%": escapes stay as sent
MARKER = re.compile(r"(?<!\\)\[(\d+(?:\s*[,;]\s*\d+)*)\]")  # "\[1]" is Markdown for the text "[1]"
# markers written otherwise: "【1】" (full-width brackets), "[1-3]" (a range)
_FULL_WIDTH_MARKER = re.compile(r"【\s*(\d+(?:\s*[,;、，]\s*\d+)*)\s*】")
_RANGE_MARKER = re.compile(r"(?<!\\)\[(\d+)\s*[-–—]\s*(\d+)\]")
# markers written after a Chinese or Japanese full stop ("…千米。[1]"), which ends the sentence before them
_AFTER_CJK_STOP = re.compile(r"([。！？])((?:\s*(?<!\\)\[\d+(?:\s*[,;]\s*\d+)*\])+)")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
MAX_RANGE = 20  # sources a range marker may stand for ("[1-999]" is no citation of 999 pages)
# a Markdown link or image to any address: its text may hold markers ("[see [1]](...)"), its address a title or one
# level of parentheses ("javascript:alert(1)", '<http://x/a b> "t"')
ANY_LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(\s*(?:<[^<>\n]*>|(?:[^()\s]|\([^()\s]*\))*)"
                       r"(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^()]*\)))?\s*\)")


def marked_code(sentence: str) -> bool:
    """Whether inline code of the sentence holds what reads as a marker ("`a[1]`"): an index, not a citation, which
    the report would renumber inside the code and list under Sources, and which the HTML shows as code."""
    return any(MARKER.search(span.group()) for span in _CODE_SPAN.finditer(sentence))


def as_markers(text: str) -> str:
    """The text with "【1, 2】" and "[1-3]" written as the markers they stand for, "[1][2]" and "[1][2][3]": as
    text they would stay in a claim, numbered over the union of sources and never renumbered. Markers after a
    Chinese or Japanese full stop go before it ("千米。[1]" → "千米[1]。"), with the sentence they cite: that stop
    ends a sentence with no space after it (evidence.SENTENCE_END)."""
    def expand(match: re.Match) -> str:
        first, last = sorted((int(match.group(1)), int(match.group(2))))
        return "".join(f"[{n}]" for n in range(first, min(last, first + MAX_RANGE - 1) + 1))

    text = _FULL_WIDTH_MARKER.sub(lambda m: "".join(f"[{n}]" for n in re.findall(r"\d+", m.group(1))), text)
    text = _RANGE_MARKER.sub(expand, text)
    return _AFTER_CJK_STOP.sub(lambda m: f"{''.join(m.group(2).split())}{m.group(1)}", text)


def unlinked(heading: str) -> str:
    """A heading without markers or links: it is no claim, so the filter checks no citation of it (a marker it
    kept as written could be "[0]" or past the last source, which the report's Sources list has no entry for)."""
    return re.sub(r"[ \t]{2,}", " ", ANY_LINK.sub(r"\1", MARKER.sub("", heading))).rstrip()


def cited_numbers(body: str) -> tuple[int, ...]:
    """The source numbers the body's markers cite, in order of first use."""
    return tuple(dict.fromkeys(int(n) for marker in MARKER.findall(body) for n in re.findall(r"\d+", marker)))


def as_text(text: str) -> str:
    """Text quoted into a report (a page's sentence, a trajectory's answer, the question) as literal text: what
    Markdown would read in it backslash-escaped, so "__exit__()" is not shown as a bold "exit", a lone backtick opens
    no code span, and a page's footnote "[3]" or an answer's "[2]" (numbered over its own search results) is no
    citation of the report's source 3 or 2, neither renumbered, listed, nor linked. The escapes an opened page's
    text already holds (trafilatura writes "\\_\\_enter\\_\\_") are undone first, or they would show.
    `unescaped` reads it back."""
    def block_start(match: re.Match) -> str:
        mark, number, delimiter = match.groups()
        return f"\\{mark}" if mark else f"{number}\\{delimiter}" if number else ""

    text = _INLINE_SPECIAL.sub(r"\\\g<0>", re.sub(r"\r\n?", "\n", unescaped(text)))
    return _BLOCK_START.sub(block_start, text)


def link_text(text: str) -> str:
    """A page's title as the text of a Markdown link: on one line, as literal text (an unbalanced "]" would end the
    link early, a "[3]" read as a citation, "<http://...>" as a link of its own)."""
    return as_text(" ".join(text.split()))


def link_target(url: str) -> str:
    """A URL as the address of a Markdown link: what would end it early or be read otherwise (whitespace, an
    unbalanced parenthesis, "<", ">", a backslash escape) percent-encoded, as is anything outside printable ASCII."""
    return urllib.parse.quote(url, safe=_LINK_TARGET_SAFE)


def renumber(body: str, cited: Sequence[int]) -> str:
    """Rewrite `[n]` markers so the sources used are numbered 1, 2, … in order of first use."""
    new_number = {old: new for new, old in enumerate(cited, start=1)}
    return re.sub(r"(?<!\\)\[(\d+)\]", lambda m: f"[{new_number.get(int(m.group(1)), m.group(1))}]", body)
