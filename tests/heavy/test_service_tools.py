"""The tools `heavy worker` and `heavy up` run with: web pages shared through Redis (unless the TTL is 0), local
corpus pages kept in the process (their URLs hold this process's corpus server port)."""

import json

import pytest

from heavy.config import Settings
from heavy.corpus.commands import corpus_add
from heavy.store import Keys
from heavy.toolbox import service_tools
from heavy.tools.base import ToolContext
from heavy.tools.fetch import FetchLimits
from heavy.tools.page_cache import InMemoryPageCache, Page
from heavy.tools.redis_page_cache import RedisPageCache
from tests.net import free_port

pytestmark = pytest.mark.anyio

CTX = ToolContext(job_id="j", trajectory=0, allowed_tools=frozenset({"search", "open_page"}))


def page_cache(executor):
    return executor._tools["open_page"].cache  # the wiring is what is under test


async def test_web_pages_are_shared_through_redis_for_the_ttl(redis_url, key_prefix):
    settings = Settings(search="web", page_cache_ttl_s=60)
    page = Page(url="https://example.org/a", final_url="https://example.org/a", title="A", text="a", fetched_at=1.0,
                content_hash="h", truncated=False)
    async with service_tools(settings, redis_url, None, Keys(key_prefix)) as executor:
        cache = page_cache(executor)
        assert isinstance(cache, RedisPageCache)
        assert (cache.ttl_ms, cache.max_bytes) == (60_000, FetchLimits().max_bytes)
        await cache.put(page)
    other = RedisPageCache.connect(redis_url, ttl_s=60, max_bytes=100, keys=Keys(key_prefix))
    try:
        assert await other.get(page.url) == page
    finally:
        await other.aclose()


async def test_a_zero_ttl_keeps_web_pages_in_memory(redis_url):
    async with service_tools(Settings(search="web", page_cache_ttl_s=0), redis_url, None) as executor:
        assert isinstance(page_cache(executor), InMemoryPageCache)


async def test_local_corpus_pages_are_not_written_to_redis(tmp_path, store, redis_url, key_prefix):
    docs = [{"title": "Hekla", "text": "Hekla is a stratovolcano in the south of Iceland."}]
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps(d) for d in docs))
    corpus_add(tmp_path / "docs.jsonl", tmp_path / "index.sqlite")
    settings = Settings(search="local", page_cache_ttl_s=60)
    async with service_tools(settings, redis_url, tmp_path / "index.sqlite", Keys(key_prefix)) as executor:
        (hit,) = (await executor.call("search", {"query": "Hekla volcano"}, CTX)).sources
        opened = await executor.call("open_page", {"url": hit.url}, CTX)
    assert opened.error is None and "stratovolcano" in opened.text
    assert hit.url.startswith("http://127.0.0.1:")
    assert [key async for key in store.redis.scan_iter(f"{key_prefix}page:*")] == []


async def test_a_fixed_corpus_port_keeps_the_pages_urls_across_restarts(tmp_path, redis_url):
    """HEAVY_CORPUS_PORT: a worker started again (or another on this host's corpus) opens the URLs the last one
    gave, as a resumed job's messages and a stored report's citations hold them."""
    (tmp_path / "docs.jsonl").write_text(json.dumps({"title": "Hekla", "text": "Hekla is a volcano in Iceland."}))
    corpus_add(tmp_path / "docs.jsonl", tmp_path / "index.sqlite")
    settings = Settings(search="local", corpus_port=free_port())
    async with service_tools(settings, redis_url, tmp_path / "index.sqlite") as executor:
        (hit,) = (await executor.call("search", {"query": "Hekla volcano"}, CTX)).sources
    assert hit.url.startswith(f"http://127.0.0.1:{settings.corpus_port}/")
    async with service_tools(settings, redis_url, tmp_path / "index.sqlite") as restarted:
        opened = await restarted.call("open_page", {"url": hit.url}, CTX)
    assert opened.error is None and "volcano" in opened.text


async def test_the_python_limits_settings_reach_a_jobs_sandbox(redis_url):
    python = ToolContext(job_id="j", trajectory=0, allowed_tools=frozenset({"python"}))
    tight = Settings(search="web", page_cache_ttl_s=0, python_cpu_s=1, python_output_bytes=100)
    async with service_tools(tight, redis_url, None) as executor:
        looped = await executor.call("python", {"code": "while True:\n    pass"}, python)
        assert looped.error == "[killed: CPU time limit reached]"
        printed = await executor.call("python", {"code": "print('y' * 2000)"}, python)
        assert printed.text.endswith("[output truncated: showing 100 of 2001 bytes]")
    roomy = Settings(search="web", page_cache_ttl_s=0, python_output_bytes=3000)
    async with service_tools(roomy, redis_url, None) as executor:
        printed = await executor.call("python", {"code": "print('y' * 2000)"}, python)
        assert (printed.text, printed.truncated) == ("y" * 2000, False)
