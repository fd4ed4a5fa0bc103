"""Plain ASGI middleware (no per-request task, streaming-safe).

Security headers on every response: see SecurityHeaders.

Request-size limit: refuses a declared Content-Length over the cap before the body is
read, and a chunked body as soon as it grows past the cap (an HTTP 413 raised from `receive`, which the
app's error handlers turn into the JSON error body)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from heavy.metrics import API_LATENCY, API_REQUESTS

DASHBOARD = Path(__file__).resolve().parent.parent / "dashboard" / "static"
# The method label's values: any other token a client sends (h11 takes any) is counted as "other", so requests
# cannot add label series without bound.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self._message)
            return message

        await self.app(scope, counting_receive, send)

    @property
    def _message(self) -> str:
        return f"request body over {self.max_bytes} bytes"

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"error": {"code": "payload_too_large", "message": self._message}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _inline_script_hashes(page: Path) -> str:
    """CSP sources allowing the page's own inline scripts, each by its sha256, and no other inline script."""
    scripts = re.findall(r"<script>(.*?)</script>", page.read_text(encoding="utf-8"), re.S) if page.is_file() else []
    return "".join(f" 'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
                   for body in scripts)


# The dashboard runs its own scripts and nothing else: were a model's or a page's text ever to reach its HTML as
# markup, no inline script or handler in it would run and nothing could be sent off the API's origin. Style attributes
# stay: the rendered report's tables align their columns with them.
DASHBOARD_POLICY = (f"default-src 'self'; script-src 'self'{_inline_script_hashes(DASHBOARD / 'index.html')}; "
                    "style-src 'self'; style-src-attr 'unsafe-inline'; img-src 'self'; connect-src 'self'; "
                    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
DOCS_PAGE = "/docs"  # Swagger UI's page starts it with an inline script: only never framed
DOCS_POLICY = "frame-ancestors 'none'"
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer")]


class SecurityHeaders:
    """No framing by another site (clickjacking the signed-in dashboard's buttons), no content-type sniffing, no
    Referer leaving with a job's URL, and the content security policies above."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # the path as the routes see it: served under a prefix (uvicorn --root-path), the request's path keeps it
        route_path = scope["path"].removeprefix(scope.get("root_path", ""))
        policy = DOCS_POLICY if route_path == DOCS_PAGE else DASHBOARD_POLICY

        async def headed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *SECURITY_HEADERS,
                                      (b"content-security-policy", policy.encode())]
            await send(message)

        await self.app(scope, receive, headed_send)


class RequestMetrics:
    """Counts requests by method, route template and status, and observes their latency (until the response
    starts, so a long SSE stream counts as its set-up time)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def observing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = getattr(scope.get("route"), "path", "unmatched")
                API_LATENCY.labels(route).observe(time.perf_counter() - started)
                method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
                API_REQUESTS.labels(method, route, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, observing_send)
