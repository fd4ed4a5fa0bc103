"""One source per document: spellings of one page's URL share a citation number and a fetched text."""

import dataclasses

import pytest

from heavy.aggregate import aggregate
from heavy.aggregate.evidence import fetched_texts, pooled_passages
from heavy.aggregate.sources import source_key, union_of_sources
from tests.heavy.fakes import ScriptedBackend, source, text
from tests.heavy.test_aggregate import result

SPELLINGS = ("https://x.example/p", "https://x.example/p/", "http://x.example/p", "HTTPS://X.EXAMPLE:443/p",
             "http://x.example:80/p/")


def test_spellings_of_one_page_share_a_key_and_other_pages_do_not():
    assert len({source_key(url) for url in SPELLINGS}) == 1
    others = ["https://x.example/q", "https://x.example/p?id=2", "https://x.example:8443/p", "https://y.example/p",
              "https://x.example/P"]
    assert len({source_key(url) for url in [SPELLINGS[0], *others]}) == len(others) + 1
    assert source_key("https://x.example") == source_key("http://x.example/")  # the root is its own path
    assert source_key("ftp://x.example/p/") == "ftp://x.example/p/"  # no web page: the URL as it is


@pytest.mark.anyio
async def test_a_page_fetched_under_several_spellings_is_one_numbered_source():
    said = "The Eiffel Tower was finished in 1889."
    pages = [dataclasses.replace(source(url, said), title="eiffel") for url in SPELLINGS]
    results = [result(i, "1889", cited=[page]) for i, page in enumerate(pages)]
    assert union_of_sources(results) == (pages[0],)
    assert list(fetched_texts(results)) == [SPELLINGS[0]]
    backend = ScriptedBackend(lambda request: text("The Eiffel Tower was finished in 1889 [1]."))
    job = await aggregate(job_id="j", question="When was the Eiffel Tower finished?", mode="report",
                          results=results, backend=backend)
    assert "[1] eiffel:" in backend.requests[0].messages[0]["content"]
    assert "[2]" not in job.markdown and f"1. [eiffel]({SPELLINGS[0]})" in job.markdown
    assert [s.url for s in job.sources] == [SPELLINGS[0]]


def test_distinct_urls_keep_their_maps_as_they_were():
    """The eval's corpus URLs have no variant spellings: the union, the fetched texts and the judge's pooled pages are
    what keying on the exact URL gives."""
    urls = [f"http://127.0.0.1:8765/{name}" for name in ("eiffel", "louvre", "tower", "paris")]
    pages = [source(url, f"The {url.rsplit('/', 1)[1]} page says the tower was finished in 1889.") for url in urls]
    results = [result(0, "1889", cited=[pages[1]], evidence=pages[:3]), result(1, "1889", evidence=pages[2:])]
    assert union_of_sources(results) == (pages[1], pages[0], pages[2], pages[3])
    assert fetched_texts(results) == {page.url: page.snippet for page in pages}
    pooled = pooled_passages("When was the tower finished?", results, ["1889"], k=4)
    assert sorted(p.url for p in pooled) == sorted(urls)
    assert {p.url: p.title for p in pooled} == {page.url: page.title for page in pages}
