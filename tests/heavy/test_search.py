"""search tool: the local BM25 backend end to end, and the web (ddgs) result mapping on a recorded response."""

import asyncio
import json
from urllib.parse import quote

import pytest

from heavy.corpus.documents import Document
from heavy.corpus.index import CorpusIndex
from heavy.tools.base import ToolContext, ToolError
from heavy.tools.search import SearchTool
from heavy.tools.search_local import LocalSearchBackend
from heavy.tools.search_web import WebSearchBackend, _ddgs_client, map_ddgs_rows

CTX = ToolContext(job_id="j", trajectory=0, allowed_tools=frozenset({"search"}))

# A ddgs `text()` response recorded in the shape the client returns (title, href, body).
RECORDED_DDGS_ROWS = json.loads("""[
  {"title": "Kimi K2 Thinking", "href": "https://example.org/kimi", "body": "An open MoE reasoning model."},
  {"title": "", "href": "https://example.org/untitled", "body": "No title given."},
  {"title": "A bad row", "href": "javascript:alert(1)", "body": "Not a web page."}
]""")


def test_local_search_returns_corpus_server_urls_with_provenance(tmp_path):
    index = CorpusIndex(tmp_path / "i.sqlite")
    index.add([
        Document(title="Ed Wood", text="Edward Davis Wood Jr. was an American filmmaker and actor."),
        Document(title="Tim Burton", text="Tim Burton directed the film Ed Wood in 1994."),
        Document(title="Hekla", text="Hekla is a volcano in Iceland."),
    ])
    tool = SearchTool(LocalSearchBackend(index, "http://127.0.0.1:9999"))
    result = asyncio.run(tool.run({"query": "Ed Wood filmmaker", "k": 2}, CTX))
    assert [s.title for s in result.sources] == ["Ed Wood", "Tim Burton"]
    assert result.sources[0].url.startswith("http://127.0.0.1:9999/doc/")
    assert result.sources[0].content_hash and result.sources[0].fetched_at > 0
    assert "[1] Ed Wood" in result.text and result.sources[0].url in result.text


def test_local_search_without_hits_says_so(tmp_path):
    tool = SearchTool(LocalSearchBackend(CorpusIndex(tmp_path / "i.sqlite"), "http://127.0.0.1:1"))
    result = asyncio.run(tool.run({"query": "nothing here"}, CTX))
    assert result.sources == () and "No results" in result.text


class RecordedDDGS:
    """Stands in for ddgs.DDGS: returns the recorded rows and remembers how it was called (no network)."""

    calls: list = []

    def __init__(self, timeout_s):
        self.timeout_s = timeout_s

    def text(self, query, **kwargs):
        RecordedDDGS.calls.append((query, kwargs, self.timeout_s))
        return RECORDED_DDGS_ROWS


def test_a_web_results_fragment_is_dropped_as_open_page_drops_it():
    rows = [{"title": "Kimi", "href": "https://example.org/kimi#architecture", "body": "MoE"}]
    assert [r.url for r in map_ddgs_rows(rows)] == ["https://example.org/kimi"]


def test_web_backend_maps_ddgs_rows_and_drops_non_http_links():
    backend = WebSearchBackend(timeout_s=7, client_factory=RecordedDDGS)
    result = asyncio.run(SearchTool(backend).run({"query": "kimi k2", "k": 3}, CTX))
    assert [(s.title, s.url) for s in result.sources] == [
        ("Kimi K2 Thinking", "https://example.org/kimi"),
        ("https://example.org/untitled", "https://example.org/untitled"),
    ]
    assert result.sources[0].snippet == "An open MoE reasoning model."
    assert RecordedDDGS.calls[-1] == ("kimi k2", {"region": "us-en", "max_results": 3}, 7)


def failing_ddgs(error):
    class Failing:
        def __init__(self, timeout_s):
            pass

        def text(self, query, **kwargs):
            raise error

    return Failing


def test_web_backend_errors_become_tool_errors():
    from ddgs.exceptions import RatelimitException

    with pytest.raises(ToolError, match="web search failed"):
        asyncio.run(WebSearchBackend(client_factory=failing_ddgs(RatelimitException("202 Ratelimit"))).search("q", 3))


def test_web_search_that_finds_nothing_says_so_instead_of_failing():
    from ddgs.exceptions import DDGSException

    backend = WebSearchBackend(client_factory=failing_ddgs(DDGSException("No results found.")))  # as ddgs 9 raises it
    result = asyncio.run(SearchTool(backend).run({"query": "zzqx unfindable"}, CTX))
    assert result.error is None and result.text == "No results for 'zzqx unfindable'. Try other words."


# Result pages as two engines serve them (trimmed to one result each): Mojeek links to the page directly, Yahoo
# through its redirect, with the page's address quoted once more after /RU=.
ESCAPED_LINKS = ["https://en.wikipedia.org/wiki/AC%2FDC", "https://example.org/a%20b/caf%C3%A9?q=%E9+x%26y"]
RECORDED_ENGINE_PAGES = {
    "mojeek": "".join(
        f'<ul class="results-standard"><li><h2><a href="{url}">AC DC {n}</a></h2><p class="s">AC DC rock band</p>'
        "</li></ul>" for n, url in enumerate(ESCAPED_LINKS)),
    "yahoo": "".join(
        f'<div class="relsrch"><div class="compTitle"><a href="https://r.search.yahoo.com/_ylt=A0/RV=2/RE=1/RO=10/'
        f'RU={quote(url, safe="")}/RK=2/RS=x-"><h3>AC DC {n}</h3></a></div><div class="compText">AC DC rock band'
        "</div></div>" for n, url in enumerate(ESCAPED_LINKS)),
}


def recorded_engine(name):
    """The real ddgs client, its one engine answering with a recorded page (no network)."""
    from ddgs.engines import ENGINES

    def client(timeout_s):
        ddgs = _ddgs_client(timeout_s)
        engine = ENGINES["text"][name](timeout=timeout_s)
        engine.request = lambda *args, **kwargs: RECORDED_ENGINE_PAGES[name]
        ddgs._get_engines = lambda category, backend: [engine]
        return ddgs

    return client


@pytest.mark.parametrize("engine", sorted(RECORDED_ENGINE_PAGES))
def test_web_result_links_keep_their_escapes(engine):
    backend = WebSearchBackend(client_factory=recorded_engine(engine))
    result = asyncio.run(SearchTool(backend).run({"query": "AC DC", "k": 5}, CTX))
    assert sorted(s.url for s in result.sources) == sorted(ESCAPED_LINKS)
