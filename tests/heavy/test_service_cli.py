"""`heavy keys`, `heavy worker`, `heavy serve` and `heavy up` from the command line: what they print, the corpus the
worker searches, and ports checked before anything starts."""

import asyncio
import os
import re
import stat
import time
from contextlib import asynccontextmanager, nullcontext
from types import SimpleNamespace

import pytest
import redis
from typer.testing import CliRunner

from heavy.cli import app
from heavy.config import Settings, get_settings
from heavy.corpus.commands import corpus_add
from heavy.store import Keys
from tests.heavy.fakes import ScriptedBackend
from tests.heavy.worker_helpers import WORKER_SETTINGS, executor, researcher, wait_api_ready
from tests.net import free_port


def test_keys_create_prints_only_the_key_on_stdout(redis_url, monkeypatch):
    """`KEY=$(heavy keys create acme)` (as deploy/README.md has it) captures the key alone; its id goes to stderr."""
    monkeypatch.setenv("HEAVY_REDIS_URL", redis_url)
    get_settings.cache_clear()
    tenant = f"cli-[/x]-{os.getpid()}-{time.monotonic_ns()}"  # brackets: a name, not rich markup
    try:
        created = CliRunner().invoke(app, ["keys", "create", tenant, "--name", "ci", "--max-streams", "3"])
    finally:
        get_settings.cache_clear()
    assert created.exit_code == 0, created.output
    assert re.fullmatch(r"hv_\S+\n", created.stdout), created.stdout
    assert f"for tenant {tenant}" in created.stderr
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:  # the tenant's own cap (open_streams.py)
        assert client.hget(Keys().tenant(tenant), "max_streams") == "3"


def capture_searched_index(monkeypatch, target: str) -> list:
    """Replaces the service's tools at `target` by one that notes the corpus index it was given and stops the
    command there ('captured'); returns the list of those indexes."""
    searched = []

    @asynccontextmanager
    async def capture(settings, url, index_path):
        searched.append(index_path)
        raise RuntimeError("captured")
        yield

    monkeypatch.setattr(target, capture)
    return searched


def test_worker_without_a_corpus_searches_pythons_reference_topics_as_heavy_up_does(tmp_path, monkeypatch,
                                                                                      redis_url):
    """`heavy serve & heavy worker` is `heavy up` as separate processes: on a machine where no `heavy corpus add`
    has run, the worker searches the same corpus rather than failing for want of one."""
    monkeypatch.setenv("HEAVY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HEAVY_REDIS_URL", redis_url)
    monkeypatch.delenv("HEAVY_CORPUS_INDEX", raising=False)
    monkeypatch.setenv("HEAVY_SEARCH", "local")
    monkeypatch.setattr("heavy.up.default_index_path", lambda settings: tmp_path / "none.sqlite")
    get_settings.cache_clear()
    searched = capture_searched_index(monkeypatch, "heavy.toolbox.service_tools")
    try:
        result = CliRunner().invoke(app, ["worker"])
    finally:
        get_settings.cache_clear()
    assert str(result.exception) == "captured", result.output
    assert searched == [tmp_path / "home" / "corpus" / "python-reference.sqlite"]
    assert searched[0].is_file()


def test_heavy_up_searches_the_corpus_heavy_ask_and_heavy_worker_search(tmp_path, monkeypatch, redis_url):
    """`heavy corpus add ./my-docs` (or HEAVY_CORPUS_INDEX), then `heavy up`: its jobs searched Python's reference
    topics, where `heavy ask` and `heavy serve & heavy worker` searched the user's documents."""
    mine = tmp_path / "mine.sqlite"
    (tmp_path / "notes.md").write_text("# Glovebox\n\nOxygen must stay below 0.5 ppm.")
    corpus_add(tmp_path / "notes.md", mine)
    monkeypatch.setenv("HEAVY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HEAVY_REDIS_URL", redis_url)
    monkeypatch.setenv("HEAVY_SEARCH", "local")
    searched = capture_searched_index(monkeypatch, "heavy.up.service_tools")
    for name, value in (("HEAVY_CORPUS_INDEX", str(mine)), ("HEAVY_CORPUS_INDEX", "")):
        monkeypatch.setenv(name, value)
        monkeypatch.setattr("heavy.up.default_index_path", lambda settings: mine)  # `heavy corpus add`'s
        get_settings.cache_clear()
        try:
            result = CliRunner().invoke(app, ["up"])
        finally:
            get_settings.cache_clear()
        assert "captured" in result.output
    assert searched == [mine, mine]
    assert not (tmp_path / "home" / "corpus").exists()  # the reference topics were not built


def test_heavy_up_prints_its_key_on_the_line_that_names_it_even_off_a_terminal(monkeypatch):
    """`heavy up > up.log &`: the API key stays on the `API key:` line (rich wraps at 80 columns off a terminal)."""
    line = f"dashboard: http://127.0.0.1:8765/   API key: hv_{'k' * 43}"
    monkeypatch.setattr("heavy.up.up", lambda settings, *, index, api_key_file, announce: announce(line))
    result = CliRunner().invoke(app, ["up"])
    assert result.exit_code == 0, result.output
    assert line in result.stdout.splitlines()


@pytest.mark.parametrize("argv", [["serve", "--port", "70000"], ["up", "--port", "-5"],
                                  ["corpus", "serve", "--port", "99999"]])
def test_a_port_out_of_range_is_refused_before_anything_starts(argv, monkeypatch):
    # bind() raised OverflowError as a traceback, `heavy up` only after starting Redis, Ray and the model
    started = []
    monkeypatch.setattr("heavy.embedded_redis.redis_url_for", lambda *args: started.append(args))
    monkeypatch.setattr("heavy.up.up", lambda *args, **kwargs: started.append(args))
    monkeypatch.setattr("heavy.corpus.commands.existing_index", lambda path: started.append(path))
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2 and "Invalid value for '--port'" in result.output and not started


def test_runtime_serve_refuses_a_port_out_of_range_before_loading_a_model():
    from runtime.cli import build_parser

    for port in ("70000", "-1", "http"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", "--port", port])
    assert build_parser().parse_args(["serve", "--port", "0"]).port == 0


def test_serve_on_port_0_binds_a_free_port_not_the_default(monkeypatch):
    # `port or settings.api_port` read --port 0 as not given
    bound = []
    monkeypatch.setattr("heavy.embedded_redis.redis_url_for", lambda url, home: nullcontext("redis://test"))
    monkeypatch.setattr("heavy.api.create_app", lambda settings: "app")
    monkeypatch.setattr("uvicorn.run", lambda app, host, port, **options: bound.append(port))
    assert CliRunner().invoke(app, ["serve", "--port", "0"]).exit_code == 0
    assert bound == [0]


def _start_heavy_up(monkeypatch, redis_url: str, api_key_file=None) -> str:
    """`heavy up`'s start on a real Redis, the model and the serving loop left out: the key it printed."""
    from heavy.up import _serve

    backend = SimpleNamespace(aclose=lambda: asyncio.sleep(0))
    monkeypatch.setattr("heavy.up.make_backend", lambda settings: backend)
    monkeypatch.setattr("heavy.up.serve_with_worker", lambda *args: asyncio.sleep(0))
    lines = []
    asyncio.run(_serve(Settings(backend="openai"), redis_url, None, api_key_file, lines.append))
    return re.search(r"API key: (\S+)", "\n".join(lines)).group(1)


def test_heavy_up_revokes_the_key_its_last_start_printed_and_keeps_the_users(redis_url, monkeypatch):
    # each start made another "heavy up" key and none was revoked: every key ever printed stayed valid for ever
    from heavy.store import Store, UnknownApiKey

    async def tenant_of(key: str) -> str | None:
        store = Store.connect(redis_url, Settings())
        try:
            return await store.tenants.resolve(key)
        except UnknownApiKey:
            return None
        finally:
            await store.aclose()

    async def create_key(name: str) -> str:
        store = Store.connect(redis_url, Settings())
        try:
            return (await store.tenants.create_key("local", name)).secret
        finally:
            await store.aclose()

    mine = asyncio.run(create_key(f"mine {time.monotonic_ns()}"))
    first = _start_heavy_up(monkeypatch, redis_url)
    second = _start_heavy_up(monkeypatch, redis_url)
    assert first != second
    assert asyncio.run(tenant_of(first)) is None
    assert asyncio.run(tenant_of(second)) == "local" and asyncio.run(tenant_of(mine)) == "local"


def test_heavy_up_writes_its_key_file_private_from_the_start(redis_url, monkeypatch, tmp_path):
    # written, then chmod 0600: until the chmod the key was in a file of the umask's mode (0644: world-readable)
    monkeypatch.setattr("pathlib.Path.chmod", lambda *args, **kwargs: None)  # what a fix after the write does
    fresh, earlier = tmp_path / "key", tmp_path / "earlier-key"
    earlier.write_text("hv_old\n")
    earlier.chmod(0o644)
    previous = os.umask(0)
    try:
        for key_file in (fresh, earlier):
            key = _start_heavy_up(monkeypatch, redis_url, key_file)
            assert key_file.read_text() == key + "\n"
            assert stat.S_IMODE(key_file.stat().st_mode) == 0o600, oct(key_file.stat().st_mode)
    finally:
        os.umask(previous)


def test_keys_list_says_when_each_key_was_made_as_heavy_jobs_list_does(redis_url, monkeypatch):
    # it showed the Unix time ("1796658344"), where `heavy jobs list` shows "2026-12-07 15:34"
    monkeypatch.setenv("HEAVY_REDIS_URL", redis_url)
    get_settings.cache_clear()
    tenant = f"when-{os.getpid()}-{time.monotonic_ns()}"
    try:
        assert CliRunner().invoke(app, ["keys", "create", tenant]).exit_code == 0
        listed = CliRunner().invoke(app, ["keys", "list", tenant])
    finally:
        get_settings.cache_clear()
    assert listed.exit_code == 0, listed.output
    assert re.search(r"\b20\d\d-\d\d-\d\d \d\d:\d\d\b", listed.stdout), listed.stdout


@pytest.mark.anyio
@pytest.mark.parametrize("death", ["killed", "crashed"])
async def test_heavy_up_stops_with_an_error_when_its_worker_dies_rather_than_take_jobs_nobody_runs(
        store, monkeypatch, caplog, death):
    from heavy.up import WorkerStopped, serve_with_worker

    crash = asyncio.Event()

    async def dying_run(self, stop):  # claims nothing: the worker's own cancellation is not what is tested here
        await crash.wait()
        raise RuntimeError("a bug")  # past the claim loop's guard
    monkeypatch.setattr("heavy.up.Worker.run", dying_run)
    settings = WORKER_SETTINGS.model_copy(update={"api_host": "127.0.0.1", "api_port": free_port()})
    serving = asyncio.create_task(serve_with_worker(settings, store, ScriptedBackend(researcher), executor()))
    await wait_api_ready(f"http://127.0.0.1:{settings.api_port}")
    if death == "killed":  # something cancelled its task
        next(task for task in asyncio.all_tasks() if task.get_name() == "heavy up worker").cancel()
    else:
        crash.set()
    with pytest.raises(WorkerStopped, match="cancelled" if death == "killed" else "RuntimeError: a bug"):
        await asyncio.wait_for(serving, 20)
    assert "the worker stopped" in caplog.text
