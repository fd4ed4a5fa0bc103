"""The tools of a research run: the local corpus (index + loopback page server, which the SSRF guard allows
explicitly) or web search, plus open_page and the sandboxed python tool. Used by the CLI and the evaluation script."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from heavy.corpus.index import CorpusIndex, existing_index
from heavy.corpus.server import CorpusServer
from heavy.tools.base import Tool, ToolExecutor, ToolLimits
from heavy.tools.fetch import PageFetcher
from heavy.tools.open_page import OpenPageTool
from heavy.tools.python_exec import PythonTool
from heavy.tools.search import SearchTool
from heavy.tools.search_local import LocalSearchBackend
from heavy.tools.ssrf import AllowedTarget, SsrfGuard


@contextmanager
def local_corpus_tools(index_path: Path | str, limits: ToolLimits | None = None, port: int = 0,
                       keep_function_words: bool = False) -> Iterator[ToolExecutor]:
    """search + open_page over a local corpus index, its page server running on 127.0.0.1:`port` meanwhile (0: a
    free port). `keep_function_words`: see CorpusIndex."""
    with CorpusServer(existing_index(index_path), port=port) as server:
        host, port = server.address
        guard = SsrfGuard(allow=[AllowedTarget(host, port)], allow_public=False)  # offline: no DNS, no web
        tools: list[Tool] = [
            SearchTool(LocalSearchBackend(CorpusIndex(index_path, keep_function_words), server.base_url)),
            OpenPageTool(PageFetcher(guard)),
            PythonTool(),
        ]
        yield ToolExecutor(tools, limits)


@contextmanager
def web_tools(limits: ToolLimits | None = None) -> Iterator[ToolExecutor]:
    """search (ddgs) + open_page over the public web, nothing private allowed."""
    from heavy.tools.search_web import WebSearchBackend

    tools = [SearchTool(WebSearchBackend()), OpenPageTool(PageFetcher(SsrfGuard())), PythonTool()]
    yield ToolExecutor(tools, limits)
