"""The service commands of the `heavy` CLI: `heavy serve`, `heavy worker`, `heavy up`, `heavy keys ...`,
`heavy store migrate`.

Without HEAVY_REDIS_URL they use the embedded Redis under HEAVY_HOME: the one a running `heavy up` started, or
one of their own for as long as they run."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from heavy.cli_options import PORTS
from heavy.config import get_settings
from heavy.display import local_minute, print_error, terminal_safe
from heavy.logs import log_json_lines

console = Console()
notes = Console(stderr=True)  # beside what a script captures: `KEY=$(heavy keys create acme)` gets the key alone
keys_app = typer.Typer(help="API keys: each maps to a tenant; only its sha256 is stored.", no_args_is_help=True)
store_app = typer.Typer(help="The job store in Redis.", no_args_is_help=True)


def _home() -> Path:
    return Path(get_settings().home).expanduser()


def serve(
    host: Annotated[str | None, typer.Option(help="bind address (default HEAVY_API_HOST)")] = None,
    port: Annotated[int | None, typer.Option(**PORTS, help="port (default HEAVY_API_PORT)")] = None,
) -> None:
    """Run the REST API and dashboard (no models here: run `heavy worker` beside it)."""
    import uvicorn

    from heavy.api import create_app
    from heavy.embedded_redis import redis_url_for

    log_json_lines()
    settings = get_settings()
    with redis_url_for(settings.redis_url, _home()) as url:
        app = create_app(settings.model_copy(update={"redis_url": url}))
        uvicorn.run(app, host=host or settings.api_host, port=settings.api_port if port is None else port,
                    log_level="info", log_config=None,  # its lines through ours: JSON too
                    root_path=settings.api_root_path)


def worker(
    index: Annotated[Path | None, typer.Option(
        help="local corpus index (default HEAVY_CORPUS_INDEX, else the one `heavy corpus add` builds, else Python's "
             "reference topics)")] = None,
) -> None:
    """Run jobs from the queue with the configured backend and tools until SIGTERM or Ctrl-C.

    The jobs it was running are then resumed by another worker from their checkpoints."""
    from heavy.embedded_redis import redis_url_for
    from heavy.llm import make_backend
    from heavy.store import Store
    from heavy.toolbox import service_tools
    from heavy.up import search_index
    from heavy.worker import Worker

    log_json_lines()
    settings = get_settings()
    if settings.search != "web":  # without a corpus of its own, the one `heavy up` searches
        index = search_index(settings, index, lambda line: console.print(line, markup=False))

    async def run(url: str) -> None:
        # the tools first: a missing corpus fails before the model loads
        async with service_tools(settings, url, index) as executor:
            store = Store.connect(url, settings)
            backend = await asyncio.to_thread(make_backend, settings)
            try:
                await Worker(store, backend, executor, settings).run_until_signalled()
            finally:
                await backend.aclose()
                await store.aclose()

    with redis_url_for(settings.redis_url, _home()) as url:
        with contextlib.suppress(KeyboardInterrupt):  # a Ctrl-C before the worker runs (while the model loads)
            asyncio.run(run(url))  # until SIGTERM or Ctrl-C
        console.print("worker stopped; its running jobs will be resumed by the next worker")


def up(
    port: Annotated[int | None, typer.Option(**PORTS, help="API port (default HEAVY_API_PORT)")] = None,
    index: Annotated[Path | None, typer.Option(
        help="local corpus index (default HEAVY_CORPUS_INDEX, else the one `heavy corpus add` builds, else Python's "
             "reference topics)")] = None,
    api_key_file: Annotated[Path | None, typer.Option(help="also write the generated API key here")] = None,
) -> None:
    """Everything on this machine: embedded Redis, the model, a worker, the API and the dashboard."""
    from heavy.up import up as run_up

    logging.basicConfig(level=logging.WARNING)
    settings = get_settings()
    if port is not None:
        settings = settings.model_copy(update={"api_port": port})
    try:
        # whole lines: off a terminal rich wraps at 80 columns, which put the key on a line of its own
        run_up(settings, index=index, api_key_file=api_key_file,
               announce=lambda line: console.print(line, markup=False, soft_wrap=True))
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled, after everything has shut down
        console.print("heavy stopped")
    except Exception as exc:  # one line for the user
        print_error(f"{type(exc).__name__}: {exc}")
        raise typer.Exit(1) from exc


def _with_store(action):
    from heavy.embedded_redis import redis_url_for
    from heavy.store import Store

    settings = get_settings()

    async def run(url: str):
        store = Store.connect(url, settings)
        try:
            return await action(store)
        finally:
            await store.aclose()

    with redis_url_for(settings.redis_url, _home()) as url:
        return asyncio.run(run(url))


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Argument(help="tenant the key acts for")],
    name: Annotated[str, typer.Option(help="a label for the key")] = "",
    max_jobs: Annotated[int | None, typer.Option(min=1, help="concurrent jobs of the tenant")] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="tokens the tenant may spend")] = None,
    max_streams: Annotated[int | None, typer.Option(min=1, help="event streams the tenant may have open at once "
                                                               "(default HEAVY_TENANT_MAX_STREAMS)")] = None,
) -> None:
    """Create an API key for TENANT; the key is printed once and cannot be shown again. The limits given are the
    tenant's, for all its keys."""
    async def create(store):
        await store.tenants.set_limits(tenant, max_jobs=max_jobs, max_tokens=max_tokens, max_streams=max_streams)
        return await store.tenants.create_key(tenant, name)
    try:
        key = _with_store(create)
    except ValueError as exc:
        print_error(str(exc))
        raise typer.Exit(1) from exc
    # markup=False: a tenant named "acme[/x]" raised here, after its key was made and before it was shown
    notes.print(f"key id {key.key_id} for tenant {key.tenant}:", markup=False)
    typer.echo(key.secret)


@keys_app.command("list")
def keys_list(tenant: Annotated[str | None, typer.Argument(help="only this tenant's keys")] = None) -> None:
    """List key ids, tenants and labels (never the keys)."""
    keys = _with_store(lambda store: store.tenants.list_keys(tenant))
    table = Table("key id", "tenant", "name", "created")
    for key in keys:
        cells = (key.key_id, key.tenant, key.name, local_minute(key.created))
        table.add_row(*(Text(terminal_safe(cell)) for cell in cells))  # a name is not markup, nor controls
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="the key id shown by `heavy keys list`")]) -> None:
    """Revoke a key at once."""
    from heavy.store import UnknownApiKey

    try:
        key = _with_store(lambda store: store.tenants.revoke(key_id))
    except UnknownApiKey as exc:
        print_error(str(exc))
        raise typer.Exit(1) from exc
    console.print(f"revoked {key.key_id} of tenant {key.tenant}", markup=False)


@store_app.command("migrate")
def store_migrate(
    target: Annotated[str, typer.Option("--to", help="Redis URL to copy the job store to (redis://, rediss://, "
                                        "unix://, redis+sentinel://, redis+cluster://)")],
    source: Annotated[str | None, typer.Option("--from", help="Redis URL to copy it from (default HEAVY_REDIS_URL, "
                                               "else the embedded Redis under HEAVY_HOME)")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="overwrite keys the target already holds")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only count the keys, and those the target holds")] = False,
    force: Annotated[bool, typer.Option("--force", help="copy though workers are still at work on the source "
                                        "(what they write after its copy is lost)")] = False,
) -> None:
    """Copy the job store (jobs, events, checkpoints, reports, the queue, tenants, API keys) to another Redis under
    the key names it needs there (a Redis Cluster's carry a hash tag), with their expiry. Stop the API and the
    workers first (deploy/README.md): it refuses while the source shows workers polling its queue or running jobs
    whose lease (HEAVY_WORKER_LEASE_S) is fresh. The page cache is not copied."""
    from heavy.embedded_redis import redis_url_for
    from heavy.store import Keys, StoreError
    from heavy.store.connection import REDIS_FAILURES, is_cluster_url, redis_client
    from heavy.store.migrate import migrate

    def keys_on(url: str) -> Keys:
        return Keys().on_one_slot() if is_cluster_url(url) else Keys()

    async def run(source_url: str):
        clients = []
        try:  # bytes, not text: DUMP payloads are binary
            clients = [redis_client(source_url), redis_client(target)]
            return await migrate(clients[0], keys_on(source_url), clients[1], keys_on(target),
                                 lease_s=get_settings().worker_lease_s, force=force, replace=replace, dry_run=dry_run)
        finally:
            for client in clients:
                await client.aclose()

    try:
        with redis_url_for(source or get_settings().redis_url, _home()) as source_url:
            migration = asyncio.run(run(source_url))
    except (ValueError, StoreError, *REDIS_FAILURES) as exc:
        print_error(f"{type(exc).__name__}: {exc}")
        raise typer.Exit(1) from exc
    table = Table("keys", "count")
    for kind, count in sorted(migration.kinds.items()):
        table.add_row(Text(terminal_safe(kind)), str(count))
    console.print(table)
    if migration.live:
        notes.print(f"warning: the source store is in use: {migration.live.describe()}", markup=False)
    if dry_run:
        console.print(f"dry run: {migration.keys} keys to copy, {len(migration.existing)} of them already on the "
                      "target", markup=False)
    else:
        console.print(f"copied {migration.copied} keys", markup=False)


def register(app: typer.Typer) -> None:
    """Mount the service commands on the main `heavy` app."""
    app.command()(serve)
    app.command()(worker)
    app.command()(up)
    app.add_typer(keys_app, name="keys")
    app.add_typer(store_app, name="store")
