"""The job's sources: the union of what the trajectories fetched, one entry (one citation number) per document.

Trajectories reach one page by several spellings of its URL: `https://x/p`, `https://x/p/`, `http://x/p`,
`HTTPS://X:443/p`. They are one source: `source_key` is what a source number or a url → text map is keyed on, and
the URL shown is the first one seen. Only what never changes the document is ignored (the scheme between http and
https, the host's case, a default port, a trailing slash on a path that is not the root, a fragment); the query
is kept, since it often names the document.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from heavy.agent.steps import TrajectoryResult
from heavy.tools.base import Source

_DEFAULT_PORTS = {"http": 80, "https": 443}


def source_key(url: str) -> str:
    """What two spellings of one page's URL share; any other URL (another scheme, a malformed port) is its own key."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:  # a port that is no number: no document to merge it with
        return url
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return url
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname  # urlsplit lowercases it
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    path = parts.path.rstrip("/") or "/"
    return f"//{netloc}{path}" + (f"?{parts.query}" if parts.query else "")


def union_of_sources(results: Sequence[TrajectoryResult]) -> tuple[Source, ...]:
    """Every source any trajectory fetched, once per `source_key`, cited ones first (they carry the answers)."""
    seen: dict[str, Source] = {}
    for result in results:
        for source in result.cited:
            seen.setdefault(source_key(source.url), source)
    for result in results:
        for source in result.evidence:
            seen.setdefault(source_key(source.url), source)
    return tuple(seen.values())


def source_numbers(sources: Sequence[Source]) -> dict[str, int]:
    """`source_key` → the source's number (from 1): look a URL up as `source_numbers(...).get(source_key(url))`."""
    return {source_key(s.url): n for n, s in enumerate(sources, start=1)}
