"""`heavy up`: everything on one machine — embedded Redis, the model in our runtime on one replica of a local Ray
instance (Ray actors behind the router, as on a cluster; HEAVY_RUNTIME_REPLICAS=0 runs it in this process instead),
the local corpus tools, a worker and the API with the dashboard on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

import uvicorn

from heavy.api import create_app
from heavy.config import Settings
from heavy.corpus.commands import default_index_path
from heavy.embedded_redis import redis_url_for
from heavy.llm import make_backend
from heavy.llm.types import LLMBackend
from heavy.stdlib_corpus import build_stdlib_corpus
from heavy.store import Store
from heavy.toolbox import service_tools
from heavy.tools.base import ToolExecutor
from heavy.worker import Worker

log = logging.getLogger(__name__)

LOCAL_TENANT = "local"


async def serve_with_worker(settings: Settings, store: Store, backend: LLMBackend, executor: ToolExecutor) -> None:
    """The API (uvicorn, which handles SIGINT/SIGTERM) and a worker in one event loop, until the API stops."""
    app = create_app(settings, store=store)
    server = uvicorn.Server(uvicorn.Config(app, host=settings.api_host, port=settings.api_port, log_level="warning"))
    stop = asyncio.Event()
    worker = asyncio.create_task(Worker(store, backend, executor, settings).run(stop))
    try:
        await server.serve()
    finally:
        stop.set()
        await worker


def corpus_index(settings: Settings, index: Path | None, announce: Callable[[str], None]) -> Path:
    """The given index, else the stdlib reference corpus under HEAVY_HOME (built on first use)."""
    if index is not None:
        return index
    path = Path(settings.home).expanduser() / "corpus" / "python-reference.sqlite"
    if not path.is_file():
        report = build_stdlib_corpus(path)
        announce(f"built the local corpus from Python's reference topics: {report.total} documents at {path}")
    return path


def search_index(settings: Settings, index: Path | None, announce: Callable[[str], None]) -> Path:
    """What `heavy ask` and `heavy worker` search: the index given (--index, HEAVY_CORPUS_INDEX), else the one `heavy
    corpus add` builds by default, else, as `heavy up` does, Python's reference topics (built on first use)."""
    if index is None and not settings.corpus_index and not default_index_path(settings).is_file():
        return corpus_index(settings, None, announce)
    return index or default_index_path(settings)


def with_local_replica(settings: Settings) -> Settings:
    """The runtime backend on one local Ray replica unless HEAVY_RUNTIME_REPLICAS says otherwise."""
    if settings.backend != "runtime" or settings.runtime_replicas is not None:
        return settings
    return settings.model_copy(update={"runtime_replicas": 1})


def up(settings: Settings, *, index: Path | None, api_key_file: Path | None,
       announce: Callable[[str], None]) -> None:
    settings = with_local_replica(settings)
    with redis_url_for(settings.redis_url, Path(settings.home).expanduser()) as url:
        index = None if settings.search == "web" else corpus_index(settings, index, announce)
        asyncio.run(_main(settings, url, index, api_key_file, announce))


async def _main(settings: Settings, url: str, index: Path | None, api_key_file: Path | None,
                announce: Callable[[str], None]) -> None:
    async with service_tools(settings, url, index) as executor:  # first: a bad corpus fails before the model loads
        await _serve(settings, url, executor, api_key_file, announce)


async def _serve(settings: Settings, url: str, executor: ToolExecutor, api_key_file: Path | None,
                 announce: Callable[[str], None]) -> None:
    store = Store.connect(url, settings)
    try:
        key = (await store.tenants.create_key(LOCAL_TENANT, "heavy up")).secret
        announce(f"loading the {settings.backend} backend ({settings.model}) ...")
        backend = await asyncio.to_thread(make_backend, settings)
        try:
            if api_key_file is not None:
                api_key_file.write_text(key + "\n")
                api_key_file.chmod(0o600)
            announce(f"dashboard: http://{settings.api_host}:{settings.api_port}/   API key: {key}")
            announce(f"redis: {url}   worker: in this process   model: {_model_place(settings)}")
            await serve_with_worker(settings, store, backend, executor)
        finally:
            await backend.aclose()
    finally:
        await store.aclose()


def _model_place(settings: Settings) -> str:
    if settings.backend != "runtime":
        return f"{settings.backend} backend"
    if not settings.runtime_replicas:
        return "in this process"
    ray = "the Ray cluster at RAY_ADDRESS" if os.environ.get("RAY_ADDRESS") else "a local Ray instance"
    return f"{settings.runtime_replicas} replica(s) on {ray}"
