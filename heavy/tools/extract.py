"""HTML to readable Markdown (trafilatura), shared by open_page and the local corpus builder; a PDF's text (pypdf)."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass

import lxml.etree
import lxml.html
import pypdf
import trafilatura

PDF_MAX_CHARS = 2_000_000  # as much text as the download cap lets a page have; a PDF's streams inflate past it
PDF_MAX_SECONDS = 20.0  # pages past it are left out: under the tool call's 30 s, so a long PDF gives its beginning


@dataclass(frozen=True)
class ExtractedPage:
    title: str
    markdown: str
    truncated: bool = False  # pages were left out (PDF_MAX_CHARS, PDF_MAX_SECONDS)


def html_to_markdown(html: str, url: str | None = None) -> ExtractedPage:
    """Main text of a page as Markdown; falls back to all visible text when trafilatura finds no main part.

    The title is the page's own <title>, else the one trafilatura infers (often the first heading).
    """
    markdown = trafilatura.extract(
        html, url=url, output_format="markdown", include_formatting=True, favor_recall=True, include_comments=False
    )
    try:
        tree = lxml.html.fromstring(html)
    except (lxml.etree.ParserError, ValueError):  # empty or not HTML at all
        tree = None
    title = " ".join((tree.findtext(".//title") or "").split()) if tree is not None else ""
    if not title:
        metadata = trafilatura.extract_metadata(html)
        title = metadata.title if metadata is not None and metadata.title else ""
    if not markdown and tree is not None:
        markdown = " ".join(tree.text_content().split())
    return ExtractedPage(title=title, markdown=markdown or "")


def pdf_to_text(data: bytes, max_seconds: float = PDF_MAX_SECONDS) -> ExtractedPage:
    """A PDF's text, page after page, and the title its metadata gives; pypdf.errors.PyPdfError if unreadable.
    Each stream inflates to at most pypdf's own cap (75 MB); the pages are read until PDF_MAX_CHARS or
    `max_seconds`."""
    deadline = time.monotonic() + max_seconds
    reader = pypdf.PdfReader(io.BytesIO(data))
    if reader.is_encrypted and not reader.decrypt(""):  # most "encrypted" PDFs have an empty user password
        raise pypdf.errors.FileNotDecryptedError("it is encrypted with a password")
    title = " ".join(str((reader.metadata or {}).get("/Title") or "").split())
    texts: list[str] = []
    size = 0
    for number, page in enumerate(reader.pages, start=1):
        texts.append(page.extract_text().strip())
        size += len(texts[-1])
        if size > PDF_MAX_CHARS or time.monotonic() > deadline:
            return ExtractedPage(title, "\n\n".join(texts)[:PDF_MAX_CHARS], truncated=number < len(reader.pages)
                                 or size > PDF_MAX_CHARS)
    return ExtractedPage(title, "\n\n".join(texts))
