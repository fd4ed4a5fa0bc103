"""One JSON error shape for every failure: `{"error": {"code", "message", "details"?}}`."""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount

from heavy.api.middleware import KNOWN_METHODS
from heavy.api.models import ErrorBody
from heavy.metrics import ERRORS
from heavy.store import IdempotencyConflict, InvalidTransition, JobNotFound, QuotaExceeded, UnknownApiKey

log = logging.getLogger(__name__)


def error_response(status: int, code: str, message: str, details: object = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


STORE_ERRORS: dict[type[Exception], tuple[int, str]] = {
    JobNotFound: (404, "not_found"),
    QuotaExceeded: (429, "quota_exceeded"),
    IdempotencyConflict: (409, "idempotency_conflict"),
    InvalidTransition: (409, "invalid_state"),
    UnknownApiKey: (401, "unauthorized"),
}
HTTP_CODES = {400: "invalid_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
              406: "not_acceptable", 409: "invalid_state", 413: "payload_too_large", 415: "unsupported_media_type",
              422: "invalid_request"}


# Every /v1/jobs route reads the caller's key and the job store, and may be sent a body (the size limit holds for all)
_EVERY_JOB_ROUTE = (401, 413, 422, 503)
# A store outage: Redis restarting comes back in seconds (the store's own reconnection rides out ~6 s of it)
STORE_RETRY_S = 5
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again: until it would succeed when that "
                                              "is known, else a bound", "required": True,
                               "schema": {"type": "integer", "minimum": 1}}}


def retry_after(seconds: float) -> dict[str, str]:
    """The Retry-After header of a 429 or 503 (whole seconds, at least 1: RFC 9110 10.2.3)."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def error_responses(*statuses: int) -> dict[int | str, dict]:
    """The OpenAPI `responses` of a /v1/jobs route's errors: those of every such route and `statuses`, all one shape
    (a 429 or 503 with its Retry-After)."""
    return {status: {"model": ErrorBody, **({"headers": RETRY_AFTER} if status in (429, 503) else {})}
            for status in sorted({*_EVERY_JOB_ROUTE, *statuses})}


def _is_json(media_type: str) -> bool:
    return media_type == "application/json" or media_type.endswith("+json")


def _methods_served(request: Request) -> list[str]:
    """Every method a route of the app answers on the request's path (mounted files aside)."""
    routes = [route for route in request.app.router.routes if not isinstance(route, Mount)]
    return [method for method in sorted(KNOWN_METHODS)
            if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)]


def install_error_handlers(app: FastAPI) -> None:
    for exc_type, (status, code) in STORE_ERRORS.items():
        def handler(request: Request, exc: Exception, status: int = status, code: str = code) -> JSONResponse:
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            if isinstance(exc, QuotaExceeded):
                headers = retry_after(exc.retry_after_s)
            return error_response(status, code, str(exc), headers=headers)
        app.add_exception_handler(exc_type, handler)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        # curl -d sends a form type, requests.post(data=...) none: FastAPI then validates the raw bytes, which says
        # nothing useful
        unparsed = media_type and not _is_json(media_type) or not media_type and isinstance(exc.body, bytes)
        if unparsed and any(e["loc"][:1] == ("body",) for e in exc.errors()):
            got = f"got {media_type!r}" if media_type else "none was sent"
            return error_response(415, "unsupported_media_type",
                                  f"the body must be JSON: send 'Content-Type: application/json' ({got})")
        details = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return error_response(422, "invalid_request", f"{where}: {first['msg']}", details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        message = str(exc.detail)
        if message == "There was an error parsing the body":  # FastAPI's words for bytes that are no UTF-8 JSON
            message = "the body could not be read as JSON (it must be UTF-8 text)"
        headers = exc.headers
        if exc.status_code == 405:  # the router names the methods of the first route on the path, not all of them
            headers = {**(headers or {}), "Allow": ", ".join(_methods_served(request))}
        return error_response(exc.status_code, code, message, headers=headers)

    @app.exception_handler(RedisError)
    async def store_down(request: Request, exc: RedisError) -> JSONResponse:
        ERRORS.labels("api_store").inc()
        log.warning("redis error: %s", exc)
        return error_response(503, "store_unavailable", "the job store is unavailable; retry shortly",
                              headers=retry_after(STORE_RETRY_S))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        ERRORS.labels("api").inc()
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", "internal error")
