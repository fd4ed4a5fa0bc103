"""What a trajectory has gathered: url → source, and url → the text it saw of it. The aggregator reads both (the
judge's pooled passages, the report's citations), and `scripts/replay_aggregation.py` rebuilds them from a recorded
run, so the agent loop and the replay keep them by the same rules."""

from __future__ import annotations

from collections.abc import Iterable

from heavy.tools.base import Source, ToolResult

SUPPORTING_SOURCES = 3
EXCERPT_CHARS = 8_000  # of a page's text, kept for citations and the aggregator: all a tool shows by default


def keep_evidence(evidence: dict[str, Source], excerpts: dict[str, str], result: ToolResult) -> None:
    """Add a tool result's sources. A page read whole (one source) beats a search snippet of it."""
    opened = len(result.sources) == 1
    for source in result.sources:
        excerpt = result.text[:EXCERPT_CHARS] if opened else source.snippet
        if source.url not in evidence or len(excerpt) > len(excerpts.get(source.url, "")):
            evidence[source.url], excerpts[source.url] = source, excerpt


def supporting_sources(answer: str, evidence: dict[str, Source], excerpts: dict[str, str]) -> tuple[Source, ...]:
    """Gathered sources whose text contains the answer: what a citation-less answer can stand on."""
    needle = " ".join(answer.lower().split())
    if not needle:
        return ()
    hits = [evidence[url] for url, text in excerpts.items() if needle in " ".join(text.lower().split())]
    return tuple(hits[:SUPPORTING_SOURCES])


def cited_sources(urls: Iterable, answer: str, evidence: dict[str, Source],
                  excerpts: dict[str, str]) -> tuple[Source, ...]:
    """The gathered sources an answer call cites by URL; without any, the gathered pages that contain the answer."""
    cited = tuple(evidence[u] for u in urls if isinstance(u, str) and u in evidence)
    return cited or supporting_sources(answer, evidence, excerpts)
