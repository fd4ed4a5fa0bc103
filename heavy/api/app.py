"""The FastAPI app: REST API under /v1, ops endpoints, the dashboard at /. It only validates, authenticates and
reads/writes Redis; models and tools run in workers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Mount
from starlette.types import Scope

from heavy import __version__
from heavy.api import routes_events, routes_jobs, routes_ops
from heavy.api.docs import install_docs
from heavy.api.errors import install_error_handlers
from heavy.api.event_hub import EventHub
from heavy.api.middleware import DASHBOARD, BodySizeLimit, RequestMetrics, SecurityHeaders
from heavy.api.open_streams import OpenStreams
from heavy.config import Settings
from heavy.store import Store


def create_app(settings: Settings | None = None, store: Store | None = None) -> FastAPI:
    """The app over `store` (owned by the caller), or over a store it opens on `settings.redis_url`."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if store is not None:
            yield
            return
        if not settings.redis_url:
            raise RuntimeError("HEAVY_REDIS_URL is not set (`heavy up` starts an embedded Redis for you)")
        app.state.store = Store.connect(settings.redis_url, settings)
        app.state.event_hub = EventHub(app.state.store)
        app.state.open_streams = OpenStreams(app.state.store.streams, settings.tenant_max_streams)
        # no Redis I/O here: started while Redis is down, the API serves /healthz, and 503 with Retry-After (and
        # /readyz 503) until it is back, rather than exit and be restarted in a loop. The queue's group is the
        # workers' to make: made from the stream's start, it holds the jobs submitted before it.
        try:
            yield
        finally:
            await app.state.store.aclose()

    app = FastAPI(title="heavy", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Heavy-mode research jobs: N trajectories merged into one cited report.")
    app.state.settings, app.state.store = settings, store
    # else the lifespan makes them
    app.state.event_hub = EventHub(store) if store is not None else None
    app.state.open_streams = OpenStreams(store.streams, settings.tenant_max_streams) if store is not None else None
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(RequestMetrics)
    app.add_middleware(SecurityHeaders)  # outermost: on every response, the body-size 413 included

    app.include_router(routes_jobs.router)
    app.include_router(routes_events.router)
    app.include_router(routes_ops.router)
    install_docs(app)  # before the dashboard, whose mount at / takes every path left
    if DASHBOARD.is_dir():
        app.router.routes.append(DashboardMount(app.router.routes))
    return app


class RevalidatedFiles(StaticFiles):
    """Files a browser asks about each time it uses them (a 304 by ETag when unchanged): the dashboard's ES modules
    import each other by fixed names, and a heuristically cached old module beside a new one breaks the page after
    an upgrade."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = "no-cache"
        return response


class DashboardMount(Mount):
    """The dashboard's files at /, on every path the API leaves. Not on one an API route serves by other methods
    (`GET .../cancel`, `PUT /v1/jobs`): that is the router's 405 naming them in Allow, not a missing file's 404."""

    def __init__(self, routes: list[BaseRoute]) -> None:
        super().__init__("/", app=RevalidatedFiles(directory=DASHBOARD, html=True), name="dashboard")
        self.routes_before = routes

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if any(route is not self and route.matches(scope)[0] is Match.PARTIAL for route in self.routes_before):
            return Match.NONE, {}
        return super().matches(scope)
