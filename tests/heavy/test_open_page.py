"""open_page: extraction to Markdown, PDFs, per-URL cache, size cap, content types, HTTP errors, redirect limits."""

import asyncio
import functools
import gzip
import tracemalloc
import zlib

import pytest

from heavy.tools import extract, open_page
from heavy.tools.base import ToolContext, ToolError, ToolExecutor
from heavy.tools.fetch import FetchLimits, PageFetcher
from heavy.tools.open_page import OpenPageTool
from heavy.tools.page_cache import InMemoryPageCache, Page
from heavy.tools.ssrf import AllowedTarget, BlockedURL, SsrfGuard
from tests.heavy.loopback_server import LoopbackServer, html_page, redirect

CTX = ToolContext(job_id="j", trajectory=0, allowed_tools=frozenset({"open_page"}))
ARTICLE = (
    "<h1>Hekla</h1><p>Hekla is a stratovolcano in the south of Iceland, one of its most active volcanoes.</p>"
    "<ul><li>Height: 1,491 m</li><li>Last eruption: 2000</li></ul>"
)
NOTES = "plain notes, ünïcode".encode()


def raw_deflate(data):
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def gzipped_zeros(size, chunk=1 << 20):
    """gzip of `size` zero bytes, compressed piece by piece (about 1 KB per MB)."""
    compressor = zlib.compressobj(9, wbits=16 + zlib.MAX_WBITS)
    return b"".join(compressor.compress(bytes(chunk)) for _ in range(size // chunk)) + compressor.flush()


BOMB = gzipped_zeros(32 << 20)  # 32 KB
CAFE = "Le café de la gare est très célèbre à Zürich."
TOKYO = "東京は日本の首都です。"


def pdf_document(title, pages):
    """A PDF of one line of Helvetica text per page, with its title in the document information."""
    page_ids = [4 + 2 * k for k in range(len(pages))]
    info = 4 + 2 * len(pages)
    objects = {1: "<< /Type /Catalog /Pages 2 0 R >>",
               2: f"<< /Type /Pages /Kids [{' '.join(f'{i} 0 R' for i in page_ids)}] /Count {len(pages)} >>",
               3: "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
               info: f"<< /Title ({title}) >>"}
    for i, line in zip(page_ids, pages, strict=True):
        stream = f"BT /F1 12 Tf 72 720 Td ({line}) Tj ET"
        objects[i] = (f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
                      f"/Contents {i + 1} 0 R >>")
        objects[i + 1] = f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream"
    document, offsets = b"%PDF-1.4\n", {}
    for i in sorted(objects):
        offsets[i] = len(document)
        document += f"{i} 0 obj\n{objects[i]}\nendobj\n".encode()
    entries = "".join(f"{offsets[i]:010d} 00000 n \n" for i in sorted(objects))
    xref = f"xref\n0 {info + 1}\n0000000000 65535 f \n{entries}"
    trailer = f"trailer\n<< /Size {info + 1} /Root 1 0 R /Info {info} 0 R >>\nstartxref\n{len(document)}\n%%EOF\n"
    return document + (xref + trailer).encode()


PAPER = pdf_document("Eruptions of Hekla", ["Hekla erupted in 1947 and in 2000.", "Its summit is 1491 m high."])


# pages naming no charset (no header, no <meta>), as many older Chinese, Japanese and Russian sites are
UNDECLARED = {"gbk": "长城是中国古代的军事防御工程，全长两万多千米。",
              "shift_jis": "富士山は日本で最も高い山で、標高は3776メートルです。",
              "windows-1251": "Москва — столица России, крупнейший по численности населения город страны.",
              # read as well in windows-1250, which has "ń" for "ñ": windows-1252, HTML's default, is taken then
              "cp1252": "El señor Ñúñez, año 1998: naïve façade, “très célèbre” à Zürich."}


def charset_page(meta, text, encoding, content_type="text/html"):
    page = f"<html><head>{meta}<title>{text[:5]}</title></head><body><article><p>{text}</p></article></body></html>"
    return 200, {"Content-Type": content_type}, page.encode(encoding)


def encoded(encoding, body):
    return 200, {"Content-Type": "text/plain; charset=utf-8", "Content-Encoding": encoding}, body


@pytest.fixture
def server():
    routes = {
        "/hekla": html_page("About Hekla", ARTICLE),
        "/notes.txt": (200, {"Content-Type": "text/plain; charset=utf-8"}, "plain notes, ünïcode".encode()),
        "/big": (200, {"Content-Type": "text/plain"}, b"x" * 5000),
        "/photo.png": (200, {"Content-Type": "image/png"}, b"\x89PNG\r\n\x1a\n"),
        "/feed": (200, {"Content-Type": "application/rss+xml"}, b"<rss><channel><title>Hekla news</title></channel>"),
        "/untyped-zip": (200, {}, b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(range(256))),
        "/untyped-notes": (200, {}, NOTES),
        "/untyped-utf16": (200, {}, NOTES.decode().encode("utf-16")),
        "/paper.pdf": (200, {"Content-Type": "application/pdf"}, PAPER),
        "/untyped-paper": (200, {}, PAPER),
        "/octet-stream-paper": (200, {"Content-Type": "application/octet-stream"}, PAPER),
        "/gzip-paper.pdf": (200, {"Content-Type": "application/pdf", "Content-Encoding": "gzip"}, gzip.compress(PAPER)),
        "/broken.pdf": (200, {"Content-Type": "application/pdf"}, b"%PDF-1.4\nnot a document"),
        "/gone": (404, {"Content-Type": "text/html"}, b"<p>not here</p>"),
        "/loop": redirect("/loop"),
        "/gzip": encoded("gzip", gzip.compress(NOTES)),
        "/deflate": encoded("deflate", zlib.compress(NOTES)),
        "/raw-deflate": encoded("deflate", raw_deflate(NOTES)),
        "/bomb": encoded("gzip", BOMB),
        "/double-gzip": encoded("gzip, gzip", gzip.compress(gzip.compress(NOTES))),
        "/brotli": encoded("br", b"\x0b\x02\x80hi\x03"),
        "/meta-charset": charset_page('<meta charset="windows-1252">', CAFE, "cp1252"),
        "/http-equiv": charset_page('<meta http-equiv="Content-Type" content="text/html; charset=Shift_JIS">', TOKYO,
                                    "shift_jis"),
        "/header-wins": charset_page('<meta charset="windows-1252">', CAFE, "utf-8", "text/html; charset=utf-8"),
        "/bom": (200, {"Content-Type": "text/plain"}, NOTES.decode().encode("utf-16")),
        "/latin1.xml": (200, {"Content-Type": "application/xml"},
                        f'<?xml version="1.0" encoding="ISO-8859-1"?>\n<note>{CAFE}</note>'.encode("latin-1")),
        "/not-a-text-codec": (200, {"Content-Type": "text/plain; charset=zlib"}, NOTES),
        **{f"/undeclared-{encoding}": charset_page("", text, encoding) for encoding, text in UNDECLARED.items()},
        "/undeclared-short-cp1252": charset_page("", CAFE, "cp1252"),  # too few bytes past ASCII to guess from
        "/undeclared-cut-utf-8": (200, {"Content-Type": "text/plain"}, (CAFE * 20).encode()[:-1]),  # cut in "é"
        "/undeclared-stray-byte": (200, {"Content-Type": "text/plain"}, f"{CAFE} \udcff {CAFE}".encode(
            errors="surrogateescape")),
    }
    with LoopbackServer(routes) as running:
        yield running


def make_tool(server, cache=None, **limits):
    guard = SsrfGuard([AllowedTarget("127.0.0.1", server.port)])
    return OpenPageTool(PageFetcher(guard, FetchLimits(**limits)), cache)


def run(tool, url):
    return asyncio.run(tool.run({"url": url}, CTX))


def test_html_is_extracted_to_markdown_with_title_and_provenance(server):
    result = run(make_tool(server), f"{server.base_url}/hekla")
    assert result.text.startswith(f"# About Hekla\nURL: {server.base_url}/hekla")
    assert "stratovolcano in the south of Iceland" in result.text and "- Height: 1,491 m" in result.text
    assert "<p>" not in result.text
    (source,) = result.sources
    assert source.url == f"{server.base_url}/hekla" and len(source.content_hash) == 64 and source.fetched_at > 0


def test_plain_text_is_returned_as_is(server):
    assert "plain notes, ünïcode" in run(make_tool(server), f"{server.base_url}/notes.txt").text


def test_pages_are_cached_per_url(server):
    cache = InMemoryPageCache()
    tool = make_tool(server, cache)
    first = run(tool, f"{server.base_url}/hekla")
    second = run(tool, f"{server.base_url}/hekla")
    assert first == second
    assert [path for path, _ in server.requests] == ["/hekla"]
    assert len(cache) == 1


def test_a_fragment_names_no_other_page(server):
    tool = make_tool(server, InMemoryPageCache())
    sources = [run(tool, f"{server.base_url}/hekla{fragment}").sources[0] for fragment in ("#history", "", "#")]
    assert {s.url for s in sources} == {f"{server.base_url}/hekla"}  # one source: one number in a report
    assert [path for path, _ in server.requests] == ["/hekla"]


def test_a_cached_page_is_not_served_where_the_guard_refuses(server):
    cache = InMemoryPageCache()
    run(make_tool(server, cache), f"{server.base_url}/hekla")
    strict = OpenPageTool(PageFetcher(SsrfGuard()), cache)  # no allow-list: loopback refused
    with pytest.raises(BlockedURL):
        run(strict, f"{server.base_url}/hekla")


def test_body_over_the_size_cap_is_cut_and_marked(server):
    result = run(make_tool(server, max_bytes=1000), f"{server.base_url}/big")
    assert result.truncated
    assert result.text.count("x") == 1000 and "longer than the download limit" in result.text


@pytest.mark.parametrize("path", ["/gzip", "/deflate", "/raw-deflate"])
def test_compressed_bodies_are_decoded(server, path):
    assert "plain notes, ünïcode" in run(make_tool(server), f"{server.base_url}{path}").text


def test_a_compression_bomb_is_inflated_only_up_to_the_size_cap(server):
    """32 MB of zeros in 32 KB of gzip: one network read used to be inflated whole (a gzip in a gzip of 2 KB held
    1 GiB), now never more than the cap."""
    tracemalloc.start()
    try:
        result = run(make_tool(server, max_bytes=1000), f"{server.base_url}/bomb")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.truncated and "longer than the download limit" in result.text
    assert peak < 8 << 20, f"{peak} bytes allocated to read a page capped at 1000"


CHARSET_PAGES = {"/meta-charset": CAFE, "/http-equiv": TOKYO, "/header-wins": CAFE, "/bom": NOTES.decode(),
                 "/not-a-text-codec": NOTES.decode(), "/latin1.xml": CAFE}


@pytest.mark.parametrize("path", CHARSET_PAGES)
def test_the_charset_is_taken_from_the_header_a_byte_order_mark_or_the_page(server, path):
    assert CHARSET_PAGES[path] in run(make_tool(server), f"{server.base_url}{path}").text


@pytest.mark.parametrize("encoding", UNDECLARED)
def test_a_page_naming_no_charset_is_read_in_the_one_its_bytes_are_written_in(server, encoding):
    assert UNDECLARED[encoding] in run(make_tool(server), f"{server.base_url}/undeclared-{encoding}").text


def test_a_short_page_naming_no_charset_is_read_as_windows_1252(server):
    assert CAFE in run(make_tool(server), f"{server.base_url}/undeclared-short-cp1252").text


@pytest.mark.parametrize("path", ["/undeclared-cut-utf-8", "/undeclared-stray-byte"])
def test_a_utf_8_body_cut_inside_a_character_or_with_a_stray_byte_is_still_read_as_utf_8(server, path):
    assert CAFE in run(make_tool(server), f"{server.base_url}{path}").text


@pytest.mark.parametrize("path", ["/double-gzip", "/brotli"])
def test_encodings_we_did_not_ask_for_are_refused(server, path):
    with pytest.raises(ToolError, match="Content-Encoding"):
        run(make_tool(server), f"{server.base_url}{path}")


def test_application_types_written_in_xml_or_json_are_read(server):
    """application/xml and application/json were read, their +xml and +json kin (feeds, JSON-LD) refused."""
    assert "<title>Hekla news</title>" in run(make_tool(server), f"{server.base_url}/feed").text


def test_binary_content_types_are_refused(server):
    with pytest.raises(ToolError, match="image/png"):
        run(make_tool(server), f"{server.base_url}/photo.png")


def test_a_binary_body_sent_with_no_type_is_refused_and_text_is_read(server):
    """A file sent with no Content-Type was shown to the model as it came, control bytes and U+FFFD, up to the
    tool's output cap: thousands of tokens of nothing. It is sniffed as a browser does."""
    with pytest.raises(ToolError, match="no content type and holds binary data"):
        run(make_tool(server), f"{server.base_url}/untyped-zip")
    for path in ("/untyped-notes", "/untyped-utf16"):
        assert "plain notes, ünïcode" in run(make_tool(server), f"{server.base_url}{path}").text


@pytest.mark.parametrize("path", ["/paper.pdf", "/untyped-paper", "/octet-stream-paper", "/gzip-paper.pdf"])
def test_a_pdf_is_read_as_its_text_page_by_page(server, path):
    result = run(make_tool(server), f"{server.base_url}{path}")
    assert result.text.startswith(f"# Eruptions of Hekla\nURL: {server.base_url}{path}")
    assert "Hekla erupted in 1947 and in 2000.\n\nIts summit is 1491 m high." in result.text
    assert not result.truncated and result.sources[0].title == "Eruptions of Hekla"


def test_a_pdf_is_read_only_within_the_reading_limits(server, monkeypatch):
    # past the deadline after the first page (a partial of the module's function: it crosses to the extraction child)
    monkeypatch.setattr(open_page, "pdf_to_text", functools.partial(extract.pdf_to_text, max_seconds=0.0))
    result = run(make_tool(server), f"{server.base_url}/paper.pdf")
    assert "Hekla erupted in 1947" in result.text and "summit" not in result.text
    assert result.truncated and "limits on reading it" in result.text


@pytest.mark.parametrize(("path", "limits"), [("/broken.pdf", {}), ("/paper.pdf", {"max_bytes": 100})])
def test_an_unreadable_pdf_is_a_clear_error(server, path, limits):
    with pytest.raises(ToolError, match="could not be read as a PDF"):
        run(make_tool(server, **limits), f"{server.base_url}{path}")


def test_http_errors_are_reported(server):
    with pytest.raises(ToolError, match="HTTP 404"):
        run(make_tool(server), f"{server.base_url}/gone")


def test_redirect_loops_stop_at_the_limit(server):
    with pytest.raises(ToolError, match="too many redirects"):
        run(make_tool(server, max_redirects=3), f"{server.base_url}/loop")
    assert len(server.requests) == 4


def test_lru_cache_evicts_the_least_recently_used_page():
    cache = InMemoryPageCache(max_entries=2)

    def page(url):
        return Page(url=url, final_url=url, title="t", text="x", fetched_at=0.0, content_hash="h", truncated=False)

    async def scenario():
        await cache.put(page("a"))
        await cache.put(page("b"))
        await cache.get("a")  # "a" is now more recent than "b"
        await cache.put(page("c"))
        return [await cache.get(u) is not None for u in ("a", "b", "c")]

    assert asyncio.run(scenario()) == [True, False, True]
    assert Page.from_dict(page("a").to_dict()) == page("a")


def test_a_page_not_in_the_cache_is_looked_up_once(server):
    """The guard looked its host up twice per page not in the cache (once to decide whether a cached page could be
    served, once to fetch): twice the wait on DNS, and a slow resolver's timeout twice over."""
    looked_up = []

    async def resolver(host, port):
        looked_up.append(host)
        return ["127.0.0.1"]

    guard = SsrfGuard([AllowedTarget("127.0.0.1", server.port)], resolver=resolver)
    tool = OpenPageTool(PageFetcher(guard), InMemoryPageCache())
    url = f"http://corpus.example:{server.port}/hekla"
    assert "stratovolcano" in run(tool, url).text
    assert looked_up == ["corpus.example"]
    assert "stratovolcano" in run(tool, url).text  # from the cache, still only where the guard allows it
    assert looked_up == ["corpus.example"] * 2 and [path for path, _ in server.requests] == ["/hekla"]


async def serve_then_stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half of the body its headers promise, then silence until the client hangs up."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n" + b"x" * 50)
    await writer.drain()
    await reader.read()
    writer.close()


def test_a_server_stalling_in_the_body_is_a_clear_error():
    """It was reported as the tool's own failure, with nothing said: "'open_page' failed: ReadTimeout: "."""
    async def scenario():
        server = await asyncio.start_server(serve_then_stall, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}/"
        fetcher = PageFetcher(SsrfGuard([AllowedTarget("127.0.0.1", port)]), FetchLimits(read_timeout_s=0.5))
        async with server:
            return url, await ToolExecutor([OpenPageTool(fetcher)]).call("open_page", {"url": url}, CTX)

    url, result = asyncio.run(scenario())
    assert result.error == f"could not read {url}: nothing arrived for 0.5 s"
