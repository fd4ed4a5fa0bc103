"""A loopback HTTP server for the local corpus: GET /doc/<id> returns the document as an HTML page.

open_page fetches corpus pages through it like any web page; its (address, port) is the one entry the
SSRF guard's allow-list needs for the local corpus.
"""

from __future__ import annotations

import html
import logging
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from heavy.corpus.index import CorpusIndex, StoredDocument

logger = logging.getLogger(__name__)

SHUTDOWN_POLL_S = 0.05  # how often serve_forever looks for a shutdown request
_DOC_PATH = re.compile(r"^/doc/([0-9]{1,18})$")  # an id SQLite can hold: a longer one raised mid-request


def doc_url(base_url: str, doc_id: int) -> str:
    return f"{base_url.rstrip('/')}/doc/{doc_id}"


def render_document(doc: StoredDocument) -> str:
    title = html.escape(doc.title)
    paragraphs = "\n".join(f"<p>{html.escape(p.strip())}</p>" for p in doc.text.split("\n\n") if p.strip())
    origin = f'\n<p>Original: <a href="{html.escape(doc.url)}">{html.escape(doc.url)}</a></p>' if doc.url else ""
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n"
        f"<body><article><h1>{title}</h1>\n{paragraphs}{origin}\n</article></body></html>\n"
    )


def _handler_for(index: CorpusIndex) -> type[BaseHTTPRequestHandler]:
    class CorpusPageHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            match = _DOC_PATH.match(self.path.split("?", 1)[0])
            doc = index.get(int(match.group(1))) if match else None
            if doc is None:
                self._send(404, "<html><body><p>No such document.</p></body></html>")
            else:
                self._send(200, render_document(doc))

        def _send(self, status: int, body: str) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the stdlib's signature)
            logger.debug("corpus server: " + format, *args)

    return CorpusPageHandler


class _PageServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: tuple) -> None:
        # a reader that stops reading (open_page's download cap, on a page of a large file) closes the connection:
        # the stdlib printed the traceback of every such page into `heavy ask`'s terminal
        if isinstance(sys.exc_info()[1], ConnectionError):
            logger.debug("corpus server: %s closed the connection before the page was sent", client_address)
            return
        super().handle_error(request, client_address)


class CorpusServer:
    """Serves an index on 127.0.0.1 in a background thread; use as a context manager or start()/stop()."""

    def __init__(self, index_path: Path | str, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = _PageServer((host, port), _handler_for(CorpusIndex(index_path)))
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(SHUTDOWN_POLL_S,), name="corpus-server", daemon=True
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def base_url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    def doc_url(self, doc_id: int) -> str:
        return doc_url(self.base_url, doc_id)

    def start(self) -> CorpusServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> CorpusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
