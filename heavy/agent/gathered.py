"""What a trajectory has gathered: url → source, and url → the text it saw of it. The aggregator reads both (the
judge's pooled passages, the report's citations), and `scripts/replay_aggregation.py` rebuilds them from a recorded
run, so the agent loop and the replay keep them by the same rules."""

from __future__ import annotations

import re
from collections.abc import Iterable

from heavy.tools.base import Source, ToolResult

SUPPORTING_SOURCES = 3
PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
EXCERPT_CHARS = 8_000  # of a page's text, kept for citations and the aggregator: all a tool shows by default
# a backslash before ASCII punctuation: Markdown's escape, which trafilatura writes into an opened page
# ("\_\_enter\_\_", "\*raised\*"), and a search snippet of the same page does not
_MARKDOWN_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")


def keep_evidence(evidence: dict[str, Source], excerpts: dict[str, str], result: ToolResult) -> None:
    """Add a tool result's sources. A page read whole (one source) stands for the page, and the text kept of a page
    is all the trajectory saw of it: the page's first EXCERPT_CHARS and every search snippet of it, each a window
    around one query's words (seen: `heavy ask` opened the Compound statements page, whose first 8,000 characters
    end before the "with" statement that its search snippet held)."""
    opened = len(result.sources) == 1
    for source in result.sources:
        seen = result.text[:EXCERPT_CHARS] if opened else source.snippet
        if source.url not in evidence or opened:
            evidence[source.url] = source
        excerpts[source.url] = merged_text(excerpts.get(source.url, ""), seen)


def keep_new_evidence(evidence: dict[str, Source], excerpts: dict[str, str], result: ToolResult
                      ) -> tuple[Source, ...]:
    """`keep_evidence`, and the result's sources that are new: not gathered before, or a page read whole for the
    first time (its search snippet was all the trajectory had seen of it)."""
    seen = {s.url: len(excerpts.get(s.url, "")) for s in result.sources}
    listed = [s.url in evidence for s in result.sources]
    keep_evidence(evidence, excerpts, result)
    opened = len(result.sources) == 1
    return tuple(s for s, known in zip(result.sources, listed, strict=True)
                 if not known or (opened and len(excerpts[s.url]) > seen[s.url]))


def merged_text(kept: str, seen: str) -> str:
    """Two views of one page as one text: the longer, then each paragraph of the other that it does not hold
    (whitespace and a cut snippet's ellipses aside)."""
    base, other = (seen, kept) if len(seen) > len(kept) else (kept, seen)
    held = _folded(base)
    extra = {_folded(p): p.strip() for p in PARAGRAPH_BREAK.split(other) if _folded(p) and _folded(p) not in held}
    return "\n\n".join([base, *extra.values()]) if extra else base


def lowered(text: str) -> str:
    """Lower case, whitespace folded: how an answer is looked for in a page."""
    return " ".join(text.lower().split())


def _folded(text: str) -> str:
    return " ".join(unescaped(text).split()).strip(" .…")


def unescaped(markdown: str) -> str:
    """The text with Markdown's backslash escapes undone: what its words are ("\\_\\_enter\\_\\_" is "__enter__")."""
    return _MARKDOWN_ESCAPE.sub(r"\1", markdown)


def supporting_sources(answer: str, evidence: dict[str, Source], excerpts: dict[str, str]) -> tuple[Source, ...]:
    """Gathered sources whose text contains the answer: what a citation-less answer can stand on."""
    needle = lowered(answer)
    if not needle:
        return ()
    hits = [evidence[url] for url, text in excerpts.items() if needle in lowered(text)]
    return tuple(hits[:SUPPORTING_SOURCES])


def cited_sources(urls: Iterable, answer: str, evidence: dict[str, Source],
                  excerpts: dict[str, str]) -> tuple[Source, ...]:
    """The gathered sources an answer call cites by URL; without any, the gathered pages that contain the answer."""
    cited = tuple(evidence[u] for u in urls if isinstance(u, str) and u in evidence)
    return cited or supporting_sources(answer, evidence, excerpts)
