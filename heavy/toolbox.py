"""The tools of a research run: the local corpus (index + loopback page server, which the SSRF guard allows
explicitly) or web search, plus open_page and the sandboxed python tool. Used by the CLI, the service's workers and
the evaluation scripts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from heavy.config import Settings
from heavy.corpus.index import CorpusIndex, existing_index
from heavy.corpus.server import CorpusServer
from heavy.store.keys import Keys
from heavy.tools.base import Tool, ToolExecutor, ToolLimits
from heavy.tools.fetch import FetchLimits, PageFetcher
from heavy.tools.open_page import OpenPageTool
from heavy.tools.page_cache import PageCache
from heavy.tools.python_exec import PythonTool
from heavy.tools.python_sandbox import PythonSandbox, SandboxLimits
from heavy.tools.redis_page_cache import RedisPageCache
from heavy.tools.search import SearchTool
from heavy.tools.search_local import LocalSearchBackend
from heavy.tools.ssrf import AllowedTarget, SsrfGuard


@contextmanager
def local_corpus_tools(index_path: Path | str, limits: ToolLimits | None = None, port: int = 0,
                       keep_function_words: bool = False,
                       sandbox_limits: SandboxLimits | None = None) -> Iterator[ToolExecutor]:
    """search + open_page over a local corpus index, its page server running on 127.0.0.1:`port` meanwhile (0: a
    free port), and python (`sandbox_limits`, default the HEAVY_PYTHON_* settings). `keep_function_words`: see
    CorpusIndex."""
    with CorpusServer(existing_index(index_path), port=port) as server:
        host, port = server.address
        guard = SsrfGuard(allow=[AllowedTarget(host, port)], allow_public=False)  # offline: no DNS, no web
        tools: list[Tool] = [
            SearchTool(LocalSearchBackend(CorpusIndex(index_path, keep_function_words), server.base_url)),
            OpenPageTool(PageFetcher(guard)),
            PythonTool(PythonSandbox(sandbox_limits)),
        ]
        yield ToolExecutor(tools, limits)


@contextmanager
def web_tools(limits: ToolLimits | None = None, cache: PageCache | None = None,
              sandbox_limits: SandboxLimits | None = None) -> Iterator[ToolExecutor]:
    """search (ddgs) + open_page over the public web, nothing private allowed; pages in `cache` (default: in memory);
    python as in local_corpus_tools."""
    from heavy.tools.search_web import WebSearchBackend

    tools = [SearchTool(WebSearchBackend()), OpenPageTool(PageFetcher(SsrfGuard()), cache),
             PythonTool(PythonSandbox(sandbox_limits))]
    yield ToolExecutor(tools, limits)


@asynccontextmanager
async def service_tools(settings: Settings, redis_url: str, index_path: Path | str | None,
                        keys: Keys | None = None) -> AsyncIterator[ToolExecutor]:
    """A service worker's tools. Web pages are shared with the other workers through Redis for
    HEAVY_PAGE_CACHE_TTL_S; local corpus pages stay in this process: their URLs name this process's corpus server
    port, which in another worker may serve another corpus or nothing, and a fetch over loopback costs little."""
    sandbox_limits = SandboxLimits.from_settings(settings)
    if settings.search != "web":
        with local_corpus_tools(index_path, port=settings.corpus_port, sandbox_limits=sandbox_limits) as executor:
            yield executor
        return
    cache = None
    if settings.page_cache_ttl_s > 0:  # pages are capped at the fetch size cap already: cache all it lets through
        cache = RedisPageCache.connect(redis_url, ttl_s=settings.page_cache_ttl_s, max_bytes=FetchLimits().max_bytes,
                                       keys=keys)
    try:
        with web_tools(cache=cache, sandbox_limits=sandbox_limits) as executor:
            yield executor
    finally:
        if cache is not None:
            await cache.aclose()
