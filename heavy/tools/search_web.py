"""The `web` search backend: the `ddgs` metasearch client, run in a worker thread (it is synchronous)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import urldefrag

from heavy.tools.base import ToolError
from heavy.tools.search import SearchResult


def _ddgs_client(timeout_s: int) -> Any:
    from ddgs import DDGS  # imported on use: it pulls in an HTTP stack the API process does not need

    _keep_result_links_as_given()
    return DDGS(timeout=timeout_s)


def _keep_result_links_as_given() -> None:
    """ddgs unquotes every text result's link as it is set (`TextResult._normalizers`): `/wiki/AC%2FDC` became
    `/wiki/AC/DC`, `/a%20b` became `/a+b`, a Latin-1 `%E9` a U+FFFD, each another address or none, which open_page
    then fetched and the report cited. An engine that unwraps a redirect (Yahoo's `/RU=...`) still unquotes that
    one layer itself."""
    from ddgs.results import TextResult

    TextResult._normalizers = {field: normalize for field, normalize in TextResult._normalizers.items()
                               if field != "href"}


def map_ddgs_rows(rows: list[dict[str, Any]]) -> list[SearchResult]:
    """ddgs text rows ({title, href, body}) to results; rows without an http(s) link are dropped, and a link's
    fragment (a place in its page: open_page fetches the page, one source, without it)."""
    return [
        SearchResult(title=str(row.get("title") or row["href"]), url=urldefrag(row["href"]).url,
                     snippet=str(row.get("body") or ""))
        for row in rows
        if str(row.get("href", "")).startswith(("http://", "https://"))
    ]


NO_RESULTS = "No results found."  # what DDGS raises when no engine failed and none found anything


class WebSearchBackend:
    name = "web"

    def __init__(
        self, region: str = "us-en", timeout_s: int = 10, client_factory: Callable[[int], Any] = _ddgs_client
    ) -> None:
        self.region = region
        self.timeout_s = timeout_s
        self._client_factory = client_factory

    async def search(self, query: str, k: int) -> list[SearchResult]:
        return await asyncio.to_thread(self._search_sync, query, k)

    def _search_sync(self, query: str, k: int) -> list[SearchResult]:
        from ddgs.exceptions import DDGSException

        try:
            rows = self._client_factory(self.timeout_s).text(query, region=self.region, max_results=k)
        except DDGSException as exc:
            if type(exc) is DDGSException and str(exc) == NO_RESULTS:  # an answer (try other words), not a failure
                return []
            raise ToolError(f"web search failed: {exc}") from exc
        return map_ddgs_rows(rows)[:k]
