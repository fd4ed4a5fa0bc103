"""Page extraction that overruns its call is killed; DNS lookups that do hold threads of their own pool only.

A thread cannot be stopped: a stuck extraction or lookup ran on after the executor gave up on its call. On asyncio's
default pool enough of them left no thread for any other `to_thread` work of the process (the LLM backend renders
its prompts there); on the extraction pool, a few hostile pages left none to read any other page for minutes.
"""

import asyncio
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from heavy.tools import blocking, open_page
from heavy.tools.base import ToolContext, ToolExecutor, ToolLimits
from heavy.tools.child_pool import ChildDied, ChildPool
from heavy.tools.fetch import FetchLimits, PageFetcher
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


def hostile_page() -> bytes:
    """Under the fetch cap (2 MB), and trafilatura takes about a minute over it on this two-core machine: one block
    of link after link."""
    return ("<html><body><div>" + "<a href='/x'>link text</a> plain " * 60_000 + "</div></body></html>").encode()


def extraction_children() -> set[int]:
    """This process's children serving extraction calls (heavy.tools.child_pool)."""
    found = set()
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            command = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if int(stat[1]) == os.getpid() and stat[0] != "Z" and b"heavy.tools.child_pool" in command:
            found.add(int(entry))
    return found


def test_a_hostile_page_costs_its_call_timeout_and_its_extraction_is_killed():
    """Eight trajectories open a page whose extraction takes minutes: each call times out, the extractions that
    started are killed, and the next page is read at once instead of after them."""
    routes = {"/hostile": (200, {"Content-Type": "text/html"}, hostile_page()),
              "/page": html_page("A page", "<p>text</p>")}
    before = extraction_children()

    async def scenario():
        with LoopbackServer(routes) as server:
            tool = OpenPageTool(PageFetcher(SsrfGuard([AllowedTarget("127.0.0.1", server.port)])))
            hurried = ToolExecutor([tool], ToolLimits(timeout_s=2, default_call_cap=100))
            results = await asyncio.gather(*(hurried.call("open_page", {"url": f"{server.base_url}/hostile"}, CTX)
                                             for _ in range(STUCK_CALLS)))
            assert all("timed out" in (result.error or "") for result in results)
            patient = ToolExecutor([tool], ToolLimits(timeout_s=OTHER_WORK_WAIT_S))
            page = await patient.call("open_page", {"url": f"{server.base_url}/page"}, CTX)
            assert page.error is None and "text" in page.text, page.error

    asyncio.run(scenario())
    for _ in range(50):  # a killed child is reaped by the thread that waited on it, just after its call returned
        if len(extraction_children() - before) <= 1:  # the one that read /page
            break
        time.sleep(0.1)
    assert len(extraction_children() - before) <= 1, "an extraction outlived its call"


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


def test_an_extraction_child_that_dies_fails_its_call_and_the_next_call_gets_a_new_one():
    """A page can crash its child (out of memory, a parser's segfault): that call fails, the pool goes on."""
    pool = ChildPool(size=1, name="test-extract")

    async def scenario():
        with pytest.raises(ChildDied, match="exit code 3"):
            await pool.run(os._exit, 3)
        with pytest.raises(ValueError, match="invalid literal"):
            await pool.run(int, "not a number")  # the function's own error, raised here
        return await pool.run(divmod, 7, 2)

    assert asyncio.run(scenario()) == (3, 1)


def test_an_extraction_child_has_none_of_our_secrets_and_a_capped_address_space(monkeypatch):
    """It parses what any page sent: a parser's bug must not reach the worker's keys, nor its memory the machine's."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-worker-secret")
    pool = ChildPool(size=1, name="test-extract", memory_bytes=256 << 20)

    async def scenario():
        assert await pool.run(os.getenv, "OPENAI_API_KEY") is None
        assert await pool.run(os.getenv, "PATH") == os.environ["PATH"]
        with pytest.raises(MemoryError):
            await pool.run(eval, "len(bytes(512 << 20))")  # calloc'd: costs no memory where it is allowed
        return await pool.run(divmod, 7, 2)  # the same child goes on

    assert asyncio.run(scenario()) == (3, 1)


def address_space_cap(pid: int) -> int:
    """A process's soft RLIMIT_AS, as /proc shows it."""
    line = next(line for line in Path(f"/proc/{pid}/limits").read_text().splitlines()
                if line.startswith("Max address space"))
    return int(line.split()[3])


def test_an_extractions_address_space_follows_the_fetch_size_limit(monkeypatch):
    """A deployment fetching larger pages gives their extraction room in proportion: the 1 GiB cap, measured for
    the fetch's 2 MB, would fail a parse that a larger page legitimately needs."""
    pool = ChildPool(size=1, name="test-extract")
    monkeypatch.setattr(open_page, "EXTRACTION", pool)

    async def cap_after_opening(server: LoopbackServer, max_bytes: int) -> int:
        fetcher = PageFetcher(SsrfGuard([AllowedTarget("127.0.0.1", server.port)]), FetchLimits(max_bytes=max_bytes))
        result = await ToolExecutor([OpenPageTool(fetcher)]).call("open_page", {"url": f"{server.base_url}/page"}, CTX)
        assert result.error is None and "text" in result.text, result.error
        (child,) = pool._idle  # the one child served the call and waits for the next
        return address_space_cap(child._process.pid)

    async def scenario():
        with LoopbackServer({"/page": html_page("A page", "<p>text</p>")}) as server:
            assert await cap_after_opening(server, FetchLimits().max_bytes) == 1 << 30
            assert await cap_after_opening(server, 8 << 20) == 2 << 30
            assert await cap_after_opening(server, 2 << 20) == 1 << 30  # the same child: a call's cap is its own
        with pytest.raises(MemoryError):
            await pool.run(eval, "len(bytes(512 << 20))", memory_bytes=256 << 20)
        return await pool.run(eval, "len(bytes(512 << 20))", memory_bytes=1 << 30)  # calloc'd: costs no memory

    assert asyncio.run(scenario()) == 512 << 20
