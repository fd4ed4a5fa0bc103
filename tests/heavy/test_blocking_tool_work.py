"""Page extraction and DNS lookups that outlive their call's timeout hold threads of their own pools only.

A thread cannot be stopped: a stuck extraction or lookup runs on after the executor gave up on its call. On
asyncio's default pool enough of them left no thread for any other `to_thread` work of the process (the LLM
backend renders its prompts there).
"""

import asyncio
import os
import socket
import threading

from heavy.tools import blocking, open_page
from heavy.tools.base import ToolContext, ToolExecutor, ToolLimits
from heavy.tools.fetch import PageFetcher
from heavy.tools.open_page import OpenPageTool
from heavy.tools.ssrf import AllowedTarget, SsrfGuard, system_resolver
from tests.heavy.loopback_server import LoopbackServer, html_page

CTX = ToolContext(job_id="j", trajectory=0, allowed_tools=frozenset({"open_page"}))
DEFAULT_POOL_THREADS = min(32, (os.cpu_count() or 1) + 4)  # asyncio's default executor
STUCK_CALLS = DEFAULT_POOL_THREADS + 2
OTHER_WORK_WAIT_S = 30  # generous: the default pool is free at once, or never while the stuck threads wait


class Stuck:
    """A blocking function that waits until released, counting the threads inside it."""

    def __init__(self) -> None:
        self.inside = 0
        self.released = threading.Event()
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            self.inside += 1
        self.released.wait()


async def other_thread_work(stuck: Stuck) -> int:
    """Work on the default pool, while the stuck threads wait; then they are let go (asyncio.run waits for the
    default pool's threads before it returns)."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(lambda: 42), OTHER_WORK_WAIT_S)
    finally:
        stuck.released.set()


def test_stuck_extractions_leave_the_default_thread_pool_free(monkeypatch):
    stuck = Stuck()
    def extract(html, url):
        stuck.wait()

    monkeypatch.setattr(open_page, "html_to_markdown", extract)

    async def scenario():
        with LoopbackServer({"/page": html_page("A page", "<p>text</p>")}) as server:
            guard = SsrfGuard([AllowedTarget("127.0.0.1", server.port)])
            executor = ToolExecutor([OpenPageTool(PageFetcher(guard))], ToolLimits(timeout_s=5, default_call_cap=100))
            results = await asyncio.gather(*(executor.call("open_page", {"url": f"{server.base_url}/page"}, CTX)
                                             for _ in range(STUCK_CALLS)))
        assert await other_thread_work(stuck) == 42
        assert all("timed out" in (result.error or "") for result in results)
        assert stuck.inside <= blocking.EXTRACTION._max_workers

    asyncio.run(scenario())


def test_stuck_dns_lookups_leave_the_default_thread_pool_free(monkeypatch):
    stuck = Stuck()
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host == "stuck.example":
            stuck.wait()
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)

    async def scenario():
        lookups = [asyncio.wait_for(system_resolver("stuck.example", 80), 1) for _ in range(STUCK_CALLS)]
        outcomes = await asyncio.gather(*lookups, return_exceptions=True)
        assert await other_thread_work(stuck) == 42
        assert all(isinstance(outcome, TimeoutError) for outcome in outcomes)
        assert stuck.inside <= blocking.DNS._max_workers

    asyncio.run(scenario())
