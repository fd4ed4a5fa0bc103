"""The `open_page` tool: fetch a URL through the SSRF guard, extract readable text, cache it by URL."""

from __future__ import annotations

import hashlib
import re
import time
from urllib.parse import urldefrag

import pypdf

from heavy.tools.base import Source, ToolContext, ToolError, ToolResult
from heavy.tools.blocking import EXTRACTION
from heavy.tools.child_pool import CHILD_MEMORY_BYTES
from heavy.tools.extract import ExtractedPage, html_to_markdown, pdf_to_text
from heavy.tools.fetch import FetchedResponse, PageFetcher, bom_encoding
from heavy.tools.page_cache import InMemoryPageCache, Page, PageCache

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
PDF_TYPES = frozenset({"application/pdf", "application/x-pdf"})
READABLE_APPLICATION_TYPES = frozenset({"application/xhtml+xml", "application/json", "application/xml", *PDF_TYPES})
PDF_MAGIC = b"%PDF-"
UNTYPED = frozenset({"", "application/octet-stream"})  # what servers send a file as when they do not know its type
# WHATWG MIME sniffing: a body sent with no type is binary when its first bytes hold a control byte no text uses
BINARY_BYTE = re.compile(rb"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f]")
SNIFF_BYTES = 1445
# Address space an extraction may map per byte the fetch lets through. Over the sandbox audit's hostile pages
# (0.2-4 MB) trafilatura's peak grew linearly with the page, by up to 137 bytes per page byte (<p> after <p>: 137;
# nested <div>s: 115; a block of links: 97; text <div>s: 57); twice that for pages not measured. At the fetch's
# 2 MB that is under the pool's 1 GiB, which stays the least (a PDF's streams); larger fetches get room in proportion.
EXTRACTION_BYTES_PER_PAGE_BYTE = 256


def extraction_memory_bytes(max_page_bytes: int) -> int:
    """The address-space cap of a page's extraction, for pages of at most `max_page_bytes`."""
    return max(CHILD_MEMORY_BYTES, EXTRACTION_BYTES_PER_PAGE_BYTE * max_page_bytes)


def is_readable(content_type: str) -> bool:
    """Text we can show: any text/*, a few application types and those written in XML or JSON (a +xml or +json
    suffix: RSS and Atom feeds, JSON-LD), or no declared type (sniffed later)."""
    return (not content_type or content_type.startswith("text/") or content_type in READABLE_APPLICATION_TYPES
            or content_type.startswith("application/") and content_type.endswith(("+xml", "+json")))


def is_binary(body: bytes) -> bool:
    """A body with no declared type that is not text: a zip, an image (UTF-16 text holds NULs, after its mark)."""
    return bom_encoding(body) is None and BINARY_BYTE.search(body[:SNIFF_BYTES]) is not None


async def page_from_response(url: str, response: FetchedResponse, memory_bytes: int) -> Page:
    """The page's text, extracted in a child whose address space is capped at `memory_bytes`."""
    is_pdf = response.content_type in PDF_TYPES or (response.content_type in UNTYPED
                                                    and response.body.startswith(PDF_MAGIC))
    if not is_pdf and not is_readable(response.content_type):
        raise ToolError(f"{url} is {response.content_type}, which cannot be read as text")
    if not is_pdf and not response.content_type and is_binary(response.body):
        raise ToolError(f"{url} was sent with no content type and holds binary data, which cannot be read as text")
    truncated = response.truncated
    if is_pdf:
        extracted = await _read_pdf(url, response, memory_bytes)
        title, text, truncated = extracted.title, extracted.markdown, truncated or extracted.truncated
    elif response.content_type in HTML_TYPES or (not response.content_type
                                                 and "<html" in response.text[:1000].lower()):
        extracted = await EXTRACTION.run(html_to_markdown, response.text, response.url, memory_bytes=memory_bytes)
        title, text = extracted.title, extracted.markdown
    else:
        title, text = "", response.text
    return Page(
        url=url, final_url=response.url, title=title or response.url, text=text.strip(), fetched_at=time.time(),
        content_hash=hashlib.sha256(text.strip().encode()).hexdigest(), truncated=truncated,
    )


async def _read_pdf(url: str, response: FetchedResponse, memory_bytes: int) -> ExtractedPage:
    try:
        return await EXTRACTION.run(pdf_to_text, response.body, memory_bytes=memory_bytes)
    except pypdf.errors.PyPdfError as exc:
        cut = " (it is longer than the download limit, which cut it)" if response.truncated else ""
        raise ToolError(f"{url} could not be read as a PDF{cut}: {exc}") from exc


def render_page(page: Page) -> str:
    moved = f" (redirected to {page.final_url})" if page.final_url != page.url else ""
    cut = ("\n\n[the page was longer than the download limit (or a PDF than the limits on reading it); this is "
           "its beginning]") if page.truncated else ""
    return f"# {page.title}\nURL: {page.url}{moved}\n\n{page.text or '(no readable text on this page)'}{cut}"


class OpenPageTool:
    name = "open_page"
    description = "Open a web page by URL and read its main text (as Markdown). Cite pages you opened."
    parameters = {
        "type": "object",
        "properties": {"url": {"type": "string", "minLength": 1, "maxLength": 2048, "description": "http(s) URL"}},
        "required": ["url"],
        "additionalProperties": False,
    }

    def __init__(self, fetcher: PageFetcher, cache: PageCache | None = None) -> None:
        self.fetcher = fetcher
        self.cache = cache if cache is not None else InMemoryPageCache()

    async def run(self, args: dict, ctx: ToolContext) -> ToolResult:
        # a fragment names a place in the page, which is never sent: one document, one source (one citation number)
        url = urldefrag(args["url"].strip()).url
        page = await self.cache.get(url)
        if page is None:  # the fetch asks the guard itself: one lookup, and it connects to the address checked
            memory_bytes = extraction_memory_bytes(self.fetcher.limits.max_bytes)
            page = await page_from_response(url, await self.fetcher.fetch(url), memory_bytes)
            await self.cache.put(page)
        else:
            await self.fetcher.guard.check(url)  # a cached page is served only where a fresh fetch would be allowed
        source = Source(
            url=page.url, title=page.title, fetched_at=page.fetched_at, content_hash=page.content_hash,
            snippet=page.text[:200],
        )
        return ToolResult(text=render_page(page), sources=(source,), truncated=page.truncated)
