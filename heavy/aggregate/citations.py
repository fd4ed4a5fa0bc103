"""Numbered citations over the union of fetched sources, and the filter that drops unsupported claims.

A claim is a sentence of the report body. It is kept only if at least one of its citations — `[n]` markers or
Markdown links — points at a page some trajectory actually fetched; citations that do not are removed, and a
sentence with none left is dropped. A sentence holding a bare URL is a copy of the source list, not a claim, and is
dropped too (the Sources section is added for the model), as is a line copying an entry of the prompt's source list
("[2] Title: its excerpt"), and so is a sentence about what "Researcher N" answered
(the prompt's findings list echoed back; the report lists the trajectories' answers itself). An answer copied with
that list's annotation, "(confidence 0.3), citing no source", loses the annotation and is checked as any claim.
Headings and blank lines pass through, except headings that restate the question or announce a source list, and
headings left with no text under them; a heading loses its markers and links (it is no claim, and nothing checks them).
A Markdown table is a block (tables.py): its header and delimiter rows pass as a heading does, each body row is one
claim, and a table left with no row goes.

Words are looked for in passages, PASSAGE_SENTENCES consecutive sentences of a page, not in the whole page: a long
page (the tools show up to 8,000 characters) holds most words somewhere.
A small model often states a fact from a source and forgets the marker. Given the sources' texts, a sentence without
a valid citation is attributed to the fetched passage holding most of its words (at least `ATTRIBUTE_OVERLAP` of
them, function words aside), which checks the claim against the page instead of trusting a marker; with no such
source it is dropped.
A marker is not trusted blindly either: a claim whose cited pages hold fewer than `SUPPORT_OVERLAP` of its words
(function words aside) is attributed by its words in the same way, or dropped. Seen: the model copied the prompt's
format example, "The tower was finished in 1889 [2].", into a report about Python, citing a Python page.
The question's words vouch for nothing: a page must also hold at least half of the words a claim adds to them.
Seen: a trajectory's wrong answer, "the break and continue statements do not affect the else clause of a loop",
echoed into the report and kept on a loops page that holds every word of it but "affect".
A claim that adds no word to the question ("break and continue interact with the else clause of a loop", to a
question on how they interact with it) says nothing and is dropped, except to a yes/no question, which a claim in
its own words answers; so is one that adds only talk of its sources ("This is supported by the information in
[1]"). A sentence that leads into a list ("... are:") is kept only when a list item follows it.
A claim that says "not" (or "no", "never", "without", "doesn't", ...) must find its words in a passage that says
"not" too: the weak model's wrong answers are mostly a page's sentence negated, which holds all the page's words.
This checks polarity only, not meaning: a page's "not" elsewhere in the passage lets a negated claim pass.
Words a claim joins with "and", "or" or "nor" must each be on its cited pages, the question's words too: a claim
joining two things says something of both (seen in the demo: "The break and continue statements ... terminate the
nearest enclosing loop [1]", on the break statement's page, which never names continue).
A sentence holding "…" (or ending in "...") copied the prompt's excerpt across its cuts: what it joins was said in
two places of a page, and a piece the excerpt cut mid-sentence is no claim (seen in the demo: '... or with the
"else" clause if there … [1][2]'). Its pieces that are whole sentences are checked as claims, each with its citations.
An ellipsis a page writes where the sentence has it is the page's own (Python's reference: 'the "try" … "except"
statement'): such a sentence is checked whole.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from heavy.aggregate.evidence import (
    CJK_STOPS,
    NEGATED,
    SENTENCE_END,
    content_words,
    negates,
    passage_words,
    stemmed_words,
    stems,
)
from heavy.aggregate.markers import ANY_LINK, MARKER, as_markers, cited_numbers, marked_code, unlinked
from heavy.aggregate.shorten import asks_yes_no
from heavy.aggregate.sources import source_key, source_numbers
from heavy.aggregate.tables import DELIMITER, HEADER, ROW, table_lines, with_row_marker, without_empty_tables
from heavy.tools.base import Source

_LINK = re.compile(r"\[([^\]]*)\]\((https?://[^)\s]+)\)")
LIST_PREFIX = re.compile(r"\s*(?:(?:[-*>]|\d+\.)\s+)?")
_NUMBERED = re.compile(r"^(\s*)\d+\.\s+")
_LIST_ITEM = re.compile(r"\s*(?:[-*+]|\d+\.)\s+")
ATTRIBUTE_OVERLAP = 0.6
ATTRIBUTE_MIN_WORDS = 3  # not counting function words
SUPPORT_OVERLAP = 0.5
SUPPORT_MIN_WORDS = 3  # shorter claims ("It is 1889 [1].") are too short to check by their words
_FUNCTION_WORDS = frozenset({
    "the", "and", "was", "were", "are", "has", "have", "had", "for", "with", "that", "this", "these", "those", "from",
    "its", "their", "which", "who", "not", "but", "can", "also", "such", "been", "into", "than", "then", "there",
})
_LIGHT_VERBS = stems({"use", "uses", "used", "using", "make", "makes", "made", "making", "do", "does", "done",
                      "doing", "perform", "performs", "performed", "allow", "allows", "allowed", "way", "ways"})
# words a sentence about the sources is made of ("described in [1]", "supported by the information in [2]")
_SOURCE_TALK = stems({
    "source", "sources", "text", "texts", "information", "described", "describes", "supported", "supports",
    "confirmed", "confirms", "stated", "states", "mentioned", "mentions", "according", "provided", "provides",
    "given", "shown", "shows", "see", "page", "pages", "article", "passage", "details", "further", "more",
})
_SOURCE_ENTRY = re.compile(r"\s*\[(\d+)\]\s+([^\n]{1,200}?):\s")  # the report prompt's "[n] Title: excerpt"
_BARE_URL = re.compile(r"(?<!\]\()https?://\S+|<[A-Za-z][A-Za-z0-9+.-]{1,31}:[^<>\s]*>")  # or an autolink
_ECHOED_FINDING = re.compile(r"\W*researchers?\s+\d", re.IGNORECASE)
# the findings list's annotation of an answer, echoed after it: "(confidence 0.3), citing no source" / "citing [2]"
_ECHOED_ANNOTATION = re.compile(r"\s*\(confidence [\d.]+\),?\s*(?:citing\s+(no source|(?:\[\d+\][,\s]*)+))?",
                                re.IGNORECASE)
# the words either side of a conjunction, past an article or "both": "break and continue", "loop, and the else"
_JOINED = re.compile(r"(\w+)\W{0,3}\s+(?:and|or|nor)\s+(?:(?:the|a|an|both|either|neither)\s+)?\W{0,2}(\w+)",
                     re.IGNORECASE)
# Where our excerpts and snippets left words out: "…" anywhere, or "..." ending a sentence (the docs' own
# "try ... except" is no cut).
_CUT = re.compile(r"…|\.\.\.(?=\s*(?:\[[\d,;\s]+\]\s*)*\.?\s*$)")
_WORD_OR_ELLIPSIS = re.compile(r"\w+|…")
_TRAILING_MARKERS = re.compile(r"(?:\s*\[\d+(?:\s*[,;]\s*\d+)*\])+\s*\.?\s*$")
_COPIED_HEADING = re.compile(r"#+\s*\**\s*(question|sources?|references?)\b", re.IGNORECASE)
_FENCE = re.compile(r"\s*(```|~~~)")


@dataclass(frozen=True)
class FilteredReport:
    body: str
    cited: tuple[int, ...]  # source numbers used by the kept claims, in order of first use
    dropped: tuple[str, ...]  # the claims taken out
    restated: tuple[str, ...] = ()  # those of them that only restate the question: dropped for saying nothing
    refuted: tuple[str, ...] = ()  # claims whose words a page holds but the model's check found unsupported


def filter_claims(body: str, sources: Sequence[Source], texts: dict[str, str] | None = None,
                  question: str = "") -> FilteredReport:
    """Keep the claims of `body` that cite fetched `sources` (numbered from 1), attributing uncited ones by their
    words when `texts` (url → the text fetched) is given; see the module docstring. The words of `question` do
    not vouch for a claim: what it adds to them must be on the page."""
    asked = stemmed_words(question)
    restating_says_nothing = bool(question) and not asks_yes_no(question)
    number_of_url = source_numbers(sources)
    words_of = {n: passage_words((texts or {}).get(s.url, "")) for n, s in enumerate(sources, start=1)}
    kept_lines, dropped, restated, said, said_words = [], [], [], set(), set()
    lines = _without_code_blocks(as_markers(body), dropped)
    tables = table_lines(lines)
    for i, line in enumerate(lines):
        stripped = line.strip()
        if _COPIED_HEADING.match(stripped):
            continue
        if not stripped or stripped.startswith("#") or tables.get(i) in (HEADER, DELIMITER):
            kept_lines.append(unlinked(line))
            continue
        row = tables.get(i) == ROW  # one claim, pipes kept (tables.py)
        prefix = "" if row else LIST_PREFIX.match(line).group()
        if _copies_a_source_entry(line[len(prefix):], sources):
            dropped.append(stripped)
            continue
        kept = []
        sentences = [stripped] if row else []
        for sentence in [] if row else SENTENCE_END.split(line[len(prefix):]):
            whole, fragments = _whole_pieces(sentence, texts or {})
            sentences += whole
            dropped += fragments
        for sentence in sentences:
            # an answer copied with the findings list's annotation: the annotation goes, its citations stay, and
            # the answer is checked as any claim
            sentence = _ECHOED_ANNOTATION.sub(_annotated_citations, sentence)
            text, numbers = _resolve(sentence, number_of_url, len(sources))
            if numbers and texts and not _supported(sentence, [w for n in numbers for w in words_of[n]], asked):
                text, numbers = _resolve(MARKER.sub("", _LINK.sub(r"\1", sentence)), number_of_url, len(sources))
            if not numbers and texts and (n := attribute(sentence, words_of, asked)) is not None:
                text, numbers = (with_row_marker(text, n) if row else _with_marker(text, n)), [n]
            says_nothing = restating_says_nothing and _adds_nothing(sentence, asked)
            if (numbers and not _BARE_URL.search(sentence) and not _ECHOED_FINDING.match(sentence)
                    and not marked_code(sentence) and not says_nothing and not _about_sources(sentence, asked)
                    and any(ch.isalnum() if row else ch.isalpha() for ch in MARKER.sub("", sentence))):
                # a small model repeats itself: a claim is said once, and one made of earlier claims' words says
                # nothing new (seen: a sentence joining the two before it, word for word); a table's row is its
                # table's, whatever the findings said before it
                claim, words = _claim_key(text), _claim_words(text)
                if claim in said or (words and words <= said_words and not row):
                    continue
                said.add(claim)
                said_words |= words
                kept.append(text)
            elif any(ch.isalpha() for ch in MARKER.sub("", sentence)):  # not a stray marker or full stop
                dropped.append(sentence.strip())
                restated += [sentence.strip()] if says_nothing else []
        if kept:
            # a numbered item as a bullet: items the filter drops leave the numbers broken, and an item numbered
            # other than 1 cannot start a list after a line of text (seen in the demo: "... [1].\n2. The break ...",
            # shown as one paragraph)
            kept_lines.append(_NUMBERED.sub(r"\1- ", prefix) + _joined(kept))
    body = _tidy("\n".join(without_empty_sections(without_empty_tables(_without_dangling_leads(kept_lines, dropped)))))
    return FilteredReport(body=body, cited=cited_numbers(body), dropped=tuple(dict.fromkeys(dropped)),  # each once
                          restated=tuple(dict.fromkeys(restated)))


def _joined(sentences: list[str]) -> str:
    """Sentences kept of one line, as one line again: after a Chinese or Japanese full stop with no space."""
    return "".join(f"{'' if i == 0 or sentences[i - 1].endswith(CJK_STOPS) else ' '}{x}"
                   for i, x in enumerate(sentences))


def _without_code_blocks(body: str, dropped: list[str]) -> list[str]:
    """The body's lines, less its fenced code blocks, which go to `dropped` line by line: code is no claim, and its
    lines, read as sentences, lost their fences and cited sources by their indices ("print(a[1])")."""
    lines, fenced = [], False
    for line in body.splitlines():
        if _FENCE.match(line) or fenced:
            if not _FENCE.match(line) and line.strip():
                dropped.append(line.strip())
            fenced ^= bool(_FENCE.match(line))
            continue
        lines.append(line)
    return lines








def _whole_pieces(sentence: str, texts: dict[str, str]) -> tuple[list[str], list[str]]:
    """A sentence copied across the cuts ("…") of an excerpt: its pieces that are whole sentences (a capital first,
    a full stop last), each with the sentence's citations, and the fragments, which are no claims (see the module
    docstring). A sentence with no cut is one whole piece, and so is one whose words a page writes in a row: the
    "…" is the page's own (seen: 'with the "try" … "except" statement', in Python's reference)."""
    if not _CUT.search(sentence) or _written_on_a_page(sentence, texts):
        return [sentence], []
    markers = _TRAILING_MARKERS.search(sentence)
    cited = markers.group().strip().rstrip(".") if markers else ""
    pieces = [p.strip() for p in _CUT.split(sentence[:markers.start()] if markers else sentence) if p.strip()]
    whole = [p for p in pieces if (p[0].isupper() or p[0].isdigit() or p[0] in "\"'“")
             and p.rstrip("\"'”)")[-1:] in (".", "!", "?")]
    if not whole:
        return [], [sentence.strip()]
    fragments = [p for p in pieces if p not in whole]
    return [f"{p[:-1] if p.endswith('.') else p} {cited}." if cited else p for p in whole], fragments


def _written_on_a_page(sentence: str, texts: dict[str, str]) -> bool:
    """Whether a page writes the sentence's words in a row, its ellipses where they stand (punctuation aside)."""
    said = _ellipsis_run(MARKER.sub("", sentence))
    return bool(said) and any(f" {said} " in f" {_ellipsis_run(text)} " for text in texts.values())


def _ellipsis_run(text: str) -> str:
    """The text's words and ellipses, lowercased, one space apart."""
    return " ".join(_WORD_OR_ELLIPSIS.findall(text.lower().replace("...", "…")))


def _copies_a_source_entry(line: str, sources: Sequence[Source]) -> bool:
    """Whether a line is an entry of the report prompt's source list copied back, "[n] <title of source n>: ..."
    (seen with the 1.5B model: "- [1] Dwyer Arena: The main rink can seat up to 1,400 people ..."): the page's words,
    not a finding, and the quotes already give them."""
    entry = _SOURCE_ENTRY.match(line)
    if entry is None or not 0 < int(entry.group(1)) <= len(sources):
        return False
    return entry.group(2).strip().lower() == sources[int(entry.group(1)) - 1].title.strip().lower()






def _annotated_citations(match: re.Match) -> str:
    """What stays of an echoed annotation: the sources it cites, as markers ("citing [1], [2]" → " [1][2]")."""
    cited = re.findall(r"\[\d+\]", match.group(1) or "")
    return f" {''.join(cited)}" if cited else ""


def without_empty_sections(lines: list[str]) -> list[str]:
    """The lines, less headings with no text under them before a heading of their level or above, or the end: a
    section whose claims were all dropped, or one the report pass only announced (seen in the demo: "### Independent
    Researchers' Answers", then the next section)."""
    return [line for i, line in enumerate(lines)
            if not (level := _heading_level(line)) or _has_text(lines[i + 1:], level)]


def _has_text(after: list[str], level: int) -> bool:
    for line in after:
        inner = _heading_level(line)
        if line.strip() and not inner:
            return True
        if inner and inner <= level:
            return False
    return False


def _heading_level(line: str) -> int:
    stripped = line.lstrip()
    return len(stripped) - len(stripped.lstrip("#"))


def _without_dangling_leads(lines: list[str], dropped: list[str]) -> list[str]:
    """The lines, less a last sentence that leads into a list no item of which follows ("The methods that a context
    manager must define are: [1]", its items dropped): alone it says nothing. What is taken goes to `dropped`."""
    kept = []
    for i, line in enumerate(lines):
        following = next((x for x in lines[i + 1:] if x.strip()), "")
        is_heading = line.lstrip().startswith("#")  # headings pass through the filter as written
        if not is_heading and MARKER.sub("", line).rstrip().endswith(":") and not _LIST_ITEM.match(following):
            last = SENTENCE_END.split(line)[-1]
            dropped.append(last[len(LIST_PREFIX.match(last).group()):].strip())
            line = line[:len(line) - len(last)].rstrip()
            if not line[len(LIST_PREFIX.match(line).group()):]:
                continue
        kept.append(line)
    return kept


def attribute(sentence: str, words_of: dict[int, list[set[str]]], asked: set[str] = frozenset()) -> int | None:
    """The number of the source whose passage (`words_of`: each source's passages' words) holds most of the
    sentence's words, if it holds enough of them, and enough of the words it adds to the question's (`asked`)."""
    words = stems(content_words(sentence) - _FUNCTION_WORDS)
    if len(words) < ATTRIBUTE_MIN_WORDS or not words_of:
        return None
    added, negated = words - asked, negates(MARKER.sub("", sentence))
    best, passage = max(((n, p) for n, passages in words_of.items() for p in passages if _same_polarity(negated, p)),
                        key=lambda item: (len(words & item[1]), len(added & item[1])), default=(None, set()))
    holds = len(words & passage) >= ATTRIBUTE_OVERLAP * len(words)
    return best if holds and _adds_supported(added, passage) and _joins_held(sentence, words_of[best]) else None


def _supported(sentence: str, cited_words: Sequence[set[str]], asked: set[str] = frozenset()) -> bool:
    """Whether a passage of the cited pages holds enough of the claim's words (a claim too short to tell passes), and
    enough of the words it adds to the question's: a claim in the question's words with one word its own ("break
    and continue do not affect the else clause of a loop", on a page about loops without "affect") is that word."""
    words = stems(content_words(MARKER.sub("", sentence)) - _FUNCTION_WORDS)
    if len(words) < SUPPORT_MIN_WORDS:
        return True
    negated = negates(MARKER.sub("", sentence))
    return _joins_held(sentence, cited_words) and any(
        len(words & page) >= SUPPORT_OVERLAP * len(words) and _adds_supported(words - asked, page)
        and _same_polarity(negated, page) for page in cited_words)


def _joins_held(sentence: str, cited_words: Sequence[set[str]]) -> bool:
    """Whether the cited passages (all of them: two joined names may stand on two pages) hold each word the claim
    joins with "and", "or" or "nor", function words and words of two letters aside."""
    joined = {w.lower() for pair in _JOINED.findall(MARKER.sub("", sentence)) for w in pair if len(w) > 2}
    return stems(joined - _FUNCTION_WORDS) <= set().union(*cited_words)


def _same_polarity(negated: bool, passage: set[str]) -> bool:
    """A claim that says "not" needs a passage that does: its words on a page that affirms them say the opposite
    (seen: "the with statement does not execute code within a context manager", on a page that says it does)."""
    return not negated or NEGATED in passage


def _claim_words(sentence: str) -> set[str]:
    """The stems of a claim's words, function words, markers and link targets aside."""
    return stems(content_words(MARKER.sub("", _LINK.sub(r"\1", sentence))) - _FUNCTION_WORDS)


def _adds_nothing(sentence: str, asked: set[str]) -> bool:
    """Whether every word of the claim is a word of the question, or a verb that says how without saying what ("by
    using", "is used to", "makes"; seen in `heavy ask`: "The with statement handles an exception raised inside its
    block by using the 'raise' statement [1]" to "How does the with statement handle an exception raised inside its
    block?", kept on the exceptions page)."""
    words = _claim_words(sentence)
    return bool(words) and words <= asked | _LIGHT_VERBS


def _about_sources(sentence: str, asked: set[str]) -> bool:
    """Whether all the claim adds to the question is talk of its sources (seen with the 1.5B model: "This series is
    described in [1] and [2].", "This is supported by the information in [1] and [2]."): too short for the word
    check to test, and it says nothing."""
    added = _claim_words(sentence) - asked
    return bool(added) and added <= _SOURCE_TALK


def _adds_supported(added: set[str], passage: set[str]) -> bool:
    """Whether a passage holds at least SUPPORT_OVERLAP of the words a claim adds to the question (none added: yes),
    and both when it adds two: half of two is the one word that may not be the claim's point (seen in the demo: "the
    break and continue statements do not affect the else clause's suite" stood on "suite" without "affect")."""
    held = len(added & passage)
    return not added or (held == 2 if len(added) == 2 else held >= SUPPORT_OVERLAP * len(added))


def _claim_key(sentence: str) -> str:
    """A claim as its words, markers and case aside: what makes two sentences the same claim."""
    return " ".join(re.findall(r"\w+", MARKER.sub("", sentence).lower()))


def _with_marker(sentence: str, n: int) -> str:
    body = sentence.rstrip()
    end = body[-1] if body and body[-1] in ".!?" else ""
    return f"{body[:len(body) - len(end)].rstrip()} [{n}]{end}"


def _resolve(sentence: str, number_of_url: dict[str, int], count: int) -> tuple[str, list[int]]:
    """The sentence with only valid citations, as `[n]` markers, and the numbers it cites (`number_of_url`:
    `source_numbers`)."""
    numbers: list[int] = []

    def link(match: re.Match) -> str:
        n = number_of_url.get(source_key(match.group(2)))
        if n is None:
            return match.group(1)
        numbers.append(n)
        return f"{match.group(1)} [{n}]"

    def marker(match: re.Match) -> str:
        valid = [int(x) for x in re.split(r"\s*[,;]\s*", match.group(1)) if 1 <= int(x) <= count]
        numbers.extend(valid)
        return "".join(f"[{n}]" for n in valid)

    # a link to a fetched page is a marker; any other link is its text alone: no address the filter did not check
    # stays live (one with a title, or to another scheme, is no _LINK)
    text = ANY_LINK.sub(r"\1", _LINK.sub(link, MARKER.sub(marker, sentence)))
    return re.sub(r"\s+([.,;!?])(?!\.)", r"\1", re.sub(r" {2,}", " ", text)).strip(), numbers


def _tidy(text: str) -> str:
    return re.sub(r"\n{3,}", "\n\n", text).strip()
