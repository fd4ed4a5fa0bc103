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
from heavy.corpus.index import indexed_documents
from heavy.embedded_redis import redis_url_for
from heavy.llm import make_backend
from heavy.llm.types import LLMBackend
from heavy.stdlib_corpus import build_stdlib_corpus
from heavy.store import Store, TenantStore
from heavy.toolbox import service_tools
from heavy.tools.base import ToolExecutor
from heavy.worker import Worker

log = logging.getLogger(__name__)

LOCAL_TENANT = "local"
UP_KEY_NAME = "heavy up"  # the keys `heavy up` makes, revoked at its next start


class WorkerStopped(RuntimeError):
    """`heavy up`'s worker ended while its API was serving."""


async def serve_with_worker(settings: Settings, store: Store, backend: LLMBackend, executor: ToolExecutor) -> None:
    """The API (uvicorn, which handles SIGINT/SIGTERM) and a worker in one event loop, until the API stops, or the
    worker does (WorkerStopped): the API would go on taking jobs nobody runs. Not restarted here: the claim loop
    outlives Redis outages, so a worker that ended is a bug (or was killed) that would recur; the jobs wait in Redis
    for the next start, which the user or a supervisor makes."""
    app = create_app(settings, store=store)
    server = uvicorn.Server(uvicorn.Config(app, host=settings.api_host, port=settings.api_port, log_level="warning",
                                           root_path=settings.api_root_path))
    stop = asyncio.Event()
    worker = asyncio.create_task(Worker(store, backend, executor, settings).run(stop), name="heavy up worker")
    worker.add_done_callback(lambda _: setattr(server, "should_exit", True))
    try:
        await server.serve()
    finally:
        died = worker.done()  # before it was asked to stop
        stop.set()
        await asyncio.wait([worker])
    if not died:
        worker.result()
        return
    cause = None if worker.cancelled() else worker.exception()
    how = "cancelled" if worker.cancelled() else f"{type(cause).__name__}: {cause}" if cause else "returned"
    log.error("the worker stopped (%s) while the API was serving; stopping heavy up", how, exc_info=cause)
    raise WorkerStopped(f"the worker stopped ({how}); heavy up stopped rather than take jobs nobody would run") \
        from cause


def reference_corpus(settings: Settings, announce: Callable[[str], None]) -> Path:
    """The stdlib reference corpus under HEAVY_HOME (built on first use)."""
    path = Path(settings.home).expanduser() / "corpus" / "python-reference.sqlite"
    if not path.is_file():
        report = build_stdlib_corpus(path)
        announce(f"built the local corpus from Python's reference topics: {report.total} documents at {path}")
    return path


def search_index(settings: Settings, index: Path | None, announce: Callable[[str], None]) -> Path:
    """What `heavy ask`, `heavy worker` and `heavy up` search: the index given (--index, HEAVY_CORPUS_INDEX), else the
    one `heavy corpus add` builds by default, else Python's reference topics (built on first use)."""
    if index is None and not settings.corpus_index and not default_index_path(settings).is_file():
        return reference_corpus(settings, announce)
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
        # what `heavy ask` and `heavy worker` search: HEAVY_CORPUS_INDEX and `heavy corpus add`'s index were passed
        # over for Python's reference topics, though `heavy serve & heavy worker` is this in separate processes
        index = None if settings.search == "web" else search_index(settings, index, announce)
        asyncio.run(_main(settings, url, index, api_key_file, announce))


async def _main(settings: Settings, url: str, index: Path | None, api_key_file: Path | None,
                announce: Callable[[str], None]) -> None:
    async with service_tools(settings, url, index) as executor:  # first: a bad corpus fails before the model loads
        announce(f"searching the local corpus {index} ({indexed_documents(index):,} documents)" if index else
                 "searching the web")
        await _serve(settings, url, executor, api_key_file, announce)


async def _serve(settings: Settings, url: str, executor: ToolExecutor, api_key_file: Path | None,
                 announce: Callable[[str], None]) -> None:
    store = Store.connect(url, settings)
    try:
        key = await replace_local_key(store.tenants)
        announce(f"loading the {settings.backend} backend ({settings.model}) ...")
        backend = await asyncio.to_thread(make_backend, settings)
        try:
            if api_key_file is not None:
                write_private(api_key_file, key + "\n")
            announce(f"dashboard: http://{settings.api_host}:{settings.api_port}/   API key: {key}")
            announce(f"redis: {url}   worker: in this process   model: {_model_place(settings)}")
            await serve_with_worker(settings, store, backend, executor)
        finally:
            await backend.aclose()
    finally:
        await store.aclose()


async def replace_local_key(tenants: TenantStore) -> str:
    """A new key for the local tenant, the keys earlier starts made revoked: each start prints its key, and those
    printed before must not stay valid for ever in the persistent embedded Redis. Keys made with `heavy keys create`
    stay."""
    for earlier in await tenants.list_keys(LOCAL_TENANT):
        if earlier.name == UP_KEY_NAME:
            await tenants.revoke(earlier.key_id)
    return (await tenants.create_key(LOCAL_TENANT, UP_KEY_NAME)).secret


def write_private(path: Path, text: str) -> None:
    """Write `text` to a file only its owner can read, from its creation on (a write, then a chmod, left a window
    where the key was world-readable); a file already there is narrowed before the text goes in."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        os.fchmod(fd, 0o600)
        file.write(text)


def _model_place(settings: Settings) -> str:
    if settings.backend != "runtime":
        return f"{settings.backend} backend"
    if not settings.runtime_replicas:
        return "in this process"
    ray = "the Ray cluster at RAY_ADDRESS" if os.environ.get("RAY_ADDRESS") else "a local Ray instance"
    return f"{settings.runtime_replicas} replica(s) on {ray}"
