"""Liveness, readiness, the version and Prometheus metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from heavy import __version__
from heavy.api.deps import StoreDep
from heavy.api.errors import RETRY_AFTER, STORE_RETRY_S, retry_after
from heavy.api.models import Readiness, Version
from heavy.metrics import QUEUE_DEPTH, QUEUE_PENDING

log = logging.getLogger(__name__)
router = APIRouter(tags=["ops"])
NOT_ANSWERING = "the job store does not answer"


@router.get("/healthz")
async def healthz() -> dict:
    """The process is up."""
    return {"status": "ok"}


@router.get("/v1/version", response_model=Version)
async def version() -> Version:
    """The API's version (heavy's), for a bug report or a client that checks what it talks to. Asked without a key,
    as /openapi.json, which states it too."""
    return Version(version=__version__)


@router.get("/readyz", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "the job store is unreachable",
                             "headers": RETRY_AFTER}})
async def readyz(store: StoreDep) -> JSONResponse:
    """Ready to take jobs: the job store answers."""
    try:
        await store.ping()
    except (RedisError, OSError) as exc:
        # the route answers anyone: the error's text (host:port, a Sentinel master's name) goes to the log only
        log.warning("not ready: %s (%s: %s)", NOT_ANSWERING, type(exc).__name__, exc)
        return JSONResponse({"status": "unavailable", "redis": NOT_ANSWERING}, status_code=503,
                            headers=retry_after(STORE_RETRY_S))
    return JSONResponse({"status": "ready"})


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(store: StoreDep) -> Response:
    try:
        QUEUE_DEPTH.set(await store.queue.depth())
        QUEUE_PENDING.set(await store.queue.pending())
    except RedisError:
        pass  # the gauges keep their last values; /readyz reports the outage
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
