"""RedisPageCache on a real redis-server: a page one worker put is another's, it expires, an oversize page is not
stored, a Redis outage costs a fetch and never the tool call, and two workers' open_page fetch a URL once."""

import json

import pytest

from heavy.embedded_redis import EmbeddedRedis
from heavy.store import Keys
from heavy.tools.base import ToolContext
from heavy.tools.fetch import PageFetcher
from heavy.tools.open_page import OpenPageTool
from heavy.tools.page_cache import Page
from heavy.tools.redis_page_cache import RedisPageCache
from heavy.tools.ssrf import AllowedTarget, SsrfGuard
from tests.heavy.loopback_server import LoopbackServer, html_page
from tests.heavy.redis_proxy import RedisProxy
from tests.heavy.test_store_failover import demote, own_redis
from tests.net import free_port

pytestmark = pytest.mark.anyio

CTX = ToolContext(job_id="j", trajectory=0, allowed_tools=frozenset({"open_page"}))
TTL_S = 600.0
CAP = 1000  # bytes of page text
URL = "https://example.org/hekla"


def page(url: str = URL, text: str = "Hekla is a stratovolcano in the south of Iceland.") -> Page:
    return Page(url=url, final_url=url, title="Hekla", text=text, fetched_at=1.5, content_hash="h", truncated=False)


def connect(url: str, prefix: str = "heavy-test:") -> RedisPageCache:
    return RedisPageCache.connect(url, ttl_s=TTL_S, max_bytes=CAP, keys=Keys(prefix))


@pytest.fixture
async def caches(redis_url, key_prefix):
    """Two workers' caches, each with a client of its own, on one Redis."""
    made = [connect(redis_url, key_prefix), connect(redis_url, key_prefix)]
    yield made
    for cache in made:
        await cache.aclose()


async def test_a_page_put_by_one_worker_is_got_by_another(caches):
    one, other = caches
    assert await other.get(URL) is None
    await one.put(page(text="Hekla, Eyjafjallajökull — ünïcode"))
    assert await other.get(URL) == page(text="Hekla, Eyjafjallajökull — ünïcode")
    assert await other.get("https://example.org/katla") is None


async def test_a_page_a_newer_worker_cached_with_a_field_more_is_got(caches, key_prefix):
    """Workers of two versions share the cache during a rolling upgrade: a field a newer one's Page gained is passed
    over, not a miss that fetches the page again and overwrites the newer worker's entry."""
    one, other = caches
    await one.redis.set(Keys(key_prefix).page(URL), json.dumps({**page().to_dict(), "added_later": 1}))
    assert await other.get(URL) == page()


async def test_a_page_key_is_under_the_store_prefix_and_expires_after_the_ttl(caches, key_prefix):
    one, _ = caches
    await one.put(page())
    key = Keys(key_prefix).page(URL)
    assert key.startswith(f"{key_prefix}page:")
    assert TTL_S * 1000 - 10_000 < await one.redis.pttl(key) <= TTL_S * 1000


async def test_a_page_over_the_size_cap_is_not_stored(caches, key_prefix):
    one, other = caches
    at_cap, over = "https://example.org/at-cap", "https://example.org/over"
    await one.put(page(at_cap, "x" * CAP))
    await one.put(page(over, "é" * (CAP // 2 + 1)))  # fewer characters than the cap, more UTF-8 bytes
    assert await other.get(at_cap) == page(at_cap, "x" * CAP)
    assert await other.get(over) is None
    assert not await one.redis.exists(Keys(key_prefix).page(over))


async def test_a_stopped_redis_makes_get_miss_and_put_return(tmp_path):
    with EmbeddedRedis(tmp_path / "redis") as server:
        cache = connect(server.url)
        await cache.put(page())
        assert await cache.get(URL) == page()  # its pooled connection is now open
    try:
        assert await cache.get(URL) is None
        await cache.put(page())  # logged, not raised
    finally:
        await cache.aclose()


async def test_a_cache_whose_address_a_failover_moved_puts_its_pages_on_the_new_primary(tmp_path_factory, key_prefix):
    """A failover without Sentinel that moves the address (a DNS name, a virtual IP): connections pooled to the
    demoted primary answered READONLY to every put for as long as the worker ran, so no page was shared again."""
    with own_redis(tmp_path_factory, "old") as old, own_redis(tmp_path_factory, "new") as new:
        async with RedisProxy(tmp_path_factory.mktemp("proxy") / "redis.sock", old.socket_path) as address:
            cache = connect(address.url, key_prefix)
            try:
                await cache.put(page("https://example.org/before"))  # a connection to the old primary, pooled
                await demote(old)
                address.upstream = new.socket_path
                await cache.put(page())
                assert await cache.get(URL) == page()
            finally:
                await cache.aclose()


async def test_open_page_over_a_closed_redis_port_still_fetches():
    cache = connect(f"redis://127.0.0.1:{free_port()}")
    try:
        assert await cache.get(URL) is None
        with LoopbackServer({"/hekla": html_page("About Hekla", "<p>Hekla is a volcano in Iceland.</p>")}) as server:
            tool = OpenPageTool(PageFetcher(SsrfGuard([AllowedTarget("127.0.0.1", server.port)])), cache)
            result = await tool.run({"url": f"{server.base_url}/hekla"}, CTX)
        assert "Hekla is a volcano in Iceland." in result.text
        assert [path for path, _ in server.requests] == ["/hekla"]
    finally:
        await cache.aclose()


async def test_two_workers_open_page_fetch_a_url_once(caches):
    with LoopbackServer({"/hekla": html_page("About Hekla", "<p>Hekla is a volcano in Iceland.</p>")}) as server:
        guard = SsrfGuard([AllowedTarget("127.0.0.1", server.port)])
        first, second = (OpenPageTool(PageFetcher(guard), cache) for cache in caches)
        url = f"{server.base_url}/hekla"
        one = await first.run({"url": url}, CTX)
        other = await second.run({"url": url}, CTX)
    assert other == one  # the same text and provenance (fetch time, content hash)
    assert "Hekla is a volcano in Iceland." in other.text
    assert [path for path, _ in server.requests] == ["/hekla"]
