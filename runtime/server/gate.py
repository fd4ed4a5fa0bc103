"""What a request passes before a route reads it: the server's API keys (`--api-key`, `RUNTIME_API_KEY`) and a cap
on the size of its body (`--max-body-bytes`), each refused in OpenAI's error shape (401, 413).

The probes and the scrape stay open (OPEN_PATHS): kubelet's and Prometheus's requests carry no key, and these routes
show no request's content, only the server's state and counters.
"""

import hashlib
import secrets
from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime.server.protocol import ApiError

OPEN_PATHS = frozenset({"/health", "/ready", "/metrics"})
# A body's room per token of the context: the longest token of the embedded vocabulary is 128 bytes as JSON (a run
# of spaces); an escaped character is 6 to 12 bytes, a token id in a list at most 8 ("151643, ").
JSON_BYTES_PER_TOKEN = 128
BODY_HEADROOM_BYTES = 2**20  # what is not prompt: tools' schemas, a response_format, stops, logit biases
CLOSE = {"connection": "close"}  # the rest of a refused body is never read: the connection cannot carry another


def default_max_body_bytes(max_model_len: int) -> int:
    """Room for one prompt at the full context in the costliest JSON (2 MiB at 8192 tokens, 33 MiB at 262144)."""
    return BODY_HEADROOM_BYTES + max_model_len * JSON_BYTES_PER_TOKEN


def checked_api_keys(keys: Sequence[str]) -> tuple[str, ...]:
    """Keys a client can send in `Authorization: Bearer <key>`: none empty (it would match an empty bearer) and none
    with whitespace or control characters (HTTP trims or refuses them in a header)."""
    for key in keys:
        if not key or not key.isprintable() or any(c.isspace() for c in key):
            raise ValueError("an API key must be non-empty, printable and without whitespace")
    return tuple(keys)


def too_large(limit: int) -> ApiError:
    return ApiError(f"the request body is larger than this server takes ({limit} bytes; runtime serve "
                    f"--max-body-bytes)", status=413)


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a body without a (truthful) Content-Length passes the cap; FastAPI lets an
    HTTPException out of its body parsing, and the app's handler answers it in the OpenAI shape."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, detail=too_large(limit).message, headers=CLOSE)


class RequestGate:
    """Pure ASGI (streamed responses pass untouched): the key, then the declared size, before the app runs; then the
    bytes received, counted as the app reads them (a chunked body declares no size)."""

    def __init__(self, app: ASGIApp, api_keys: Sequence[str], max_body_bytes: int) -> None:
        if max_body_bytes <= 0:
            raise ValueError(f"max_body_bytes must be > 0, got {max_body_bytes}")
        self.app, self.max_body_bytes = app, max_body_bytes
        self._key_digests = [hashlib.sha256(key.encode()).digest() for key in checked_api_keys(api_keys)]

    def _authorized(self, headers: Headers) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        digest = hashlib.sha256(token.strip().encode()).digest()  # equal lengths: compare_digest takes constant time
        matched = [secrets.compare_digest(digest, key) for key in self._key_digests]  # every key, no early exit
        return scheme.lower() == "bearer" and any(matched)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if self._key_digests and scope["path"] not in OPEN_PATHS and not self._authorized(headers):
            error = ApiError("a valid API key is required: send it as 'Authorization: Bearer <key>'", status=401,
                             code="invalid_api_key")  # OpenAI's: clients tell a wrong key from other 401s by it
            await _answer(error, scope, receive, send, {"www-authenticate": "Bearer"})
            return
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await _answer(too_large(self.max_body_bytes), scope, receive, send, CLOSE)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        await self.app(scope, counted, send)


async def _answer(error: ApiError, scope: Scope, receive: Receive, send: Send, headers: dict[str, str]) -> None:
    await JSONResponse(error.body(), status_code=error.status, headers=headers)(scope, receive, send)
