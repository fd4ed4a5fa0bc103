"""Page extraction and host name lookups that overrun their call are killed.

A thread cannot be stopped: a stuck extraction or lookup ran on after the executor gave up on its call, and a few
hostile pages (or resolvers that never answer) left no thread to read any other page, or look up any other name.
They run in child processes now (heavy.tools.child_pool), killed when their call is given up.
"""

import asyncio
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from heavy.tools import blocking, open_page, ssrf
from heavy.tools.base import ToolContext, ToolError, ToolExecutor, ToolLimits
from heavy.tools.child_pool import ChildDied, ChildPool
from heavy.tools.fetch import FetchLimits, PageFetcher
from heavy.tools.open_page import OpenPageTool
from heavy.tools.python_sandbox import namespaces_available
from heavy.tools.ssrf import AllowedTarget, SsrfGuard, system_resolver
from tests.heavy.loopback_server import LoopbackServer, html_page

CTX = ToolContext(job_id="j", trajectory=0, allowed_tools=frozenset({"open_page"}))
DEFAULT_POOL_THREADS = min(32, (os.cpu_count() or 1) + 4)  # asyncio's default executor
STUCK_CALLS = DEFAULT_POOL_THREADS + 2
OTHER_WORK_WAIT_S = 30  # generous: a free pool answers at once, a held one not for minutes


def hostile_page() -> bytes:
    """Under the fetch cap (2 MB), and trafilatura takes about a minute over it on this two-core machine: one block
    of link after link."""
    return ("<html><body><div>" + "<a href='/x'>link text</a> plain " * 60_000 + "</div></body></html>").encode()


def pool_children() -> set[int]:
    """This process's children serving calls of a child pool (extractions, lookups)."""
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
    before = pool_children()

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
        if len(pool_children() - before) <= 1:  # the one that read /page
            break
        time.sleep(0.1)
    assert len(pool_children() - before) <= 1, "an extraction outlived its call"


def lookup_stuck_for_stuck_names(host: str, port: int) -> list[str]:
    """A resolver that never answers for stuck.example (run in a DNS child: by name, so defined at module level)."""
    if host == "stuck.example":
        threading.Event().wait()
    return blocking.addresses_of(host, port)  # the child's own: the real lookup (the patch is the parent's)


def test_lookups_that_never_answer_are_killed_at_their_timeout_and_leave_the_pool_free(monkeypatch):
    """A lookup in a thread ran on after its call gave up: a few resolvers that never answer held every thread of
    the DNS pool, and no other page could be opened. Each lookup is now killed at its own bound."""
    pool = ChildPool(size=2, name="test-dns")
    monkeypatch.setattr(blocking, "DNS", pool)
    monkeypatch.setattr(blocking, "addresses_of", lookup_stuck_for_stuck_names)
    monkeypatch.setattr(ssrf, "LOOKUP_TIMEOUT_S", 1)
    before = pool_children()

    async def scenario():
        guard = SsrfGuard()
        stuck = await asyncio.gather(*(guard.check("http://stuck.example/") for _ in range(2 * pool.size)),
                                     return_exceptions=True)
        assert all(isinstance(error, ToolError) and "cannot resolve host 'stuck.example': no answer within 1 s"
                   in str(error) for error in stuck), stuck
        monkeypatch.setattr(ssrf, "LOOKUP_TIMEOUT_S", OTHER_WORK_WAIT_S)  # a new child imports this test module
        return await system_resolver("localhost", 80)

    assert "127.0.0.1" in asyncio.run(scenario())
    for _ in range(50):  # a killed child is reaped by the thread that waited on it, just after its call returned
        if len(pool_children() - before) <= 1:  # the one that looked up localhost
            break
        time.sleep(0.1)
    assert len(pool_children() - before) <= 1, "a lookup outlived its call"


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


# Run as root in new network and mount namespaces: loopback up, resolv.conf, hosts and nsswitch.conf bound over
# (inside the namespace only) to files of the test's, and a nameserver on 127.0.0.1 that reads queries and never
# answers (glibc waits 30 s, five times). Lookups of a name only DNS could answer are given up after 2 s each (as
# the executor's timeout gives up on a call); then a name /etc/hosts holds must still resolve.
SILENT_RESOLVER_SCENARIO = """
import asyncio, os, socket, subprocess, sys, threading, time
from heavy.tools.ssrf import SsrfGuard
from tests.heavy.test_blocking_tool_work import pool_children

subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
for name in ("resolv.conf", "hosts", "nsswitch.conf"):
    subprocess.run(["mount", "--bind", os.path.join(sys.argv[1], name), "/etc/" + name], check=True)
nameserver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
nameserver.bind(("127.0.0.1", 53))
queries = []
threading.Thread(target=lambda: [queries.append(nameserver.recv(512)) for _ in iter(int, 1)], daemon=True).start()

async def scenario():
    guard = SsrfGuard()
    silent = [asyncio.wait_for(guard.check("http://silent.example/"), 2) for _ in range(12)]
    print("silent", {type(outcome).__name__ for outcome in await asyncio.gather(*silent, return_exceptions=True)})
    try:
        print("listed", (await asyncio.wait_for(guard.check("http://listed.example/"), 30)).address)
    except TimeoutError:
        print("listed TimeoutError")

asyncio.run(scenario())
for _ in range(50):  # killed children are reaped by the threads that waited on them
    if len(pool_children()) <= 1:
        break
    time.sleep(0.1)
print("children", len(pool_children()), "queries", bool(queries), flush=True)
os._exit(0)  # a thread stuck in a lookup would hold interpreter exit for minutes
"""


@pytest.mark.slow
@pytest.mark.skipif(not (namespaces_available() and shutil.which("ip")), reason="needs root, unshare and ip")
def test_lookups_from_a_nameserver_that_never_answers_leave_other_names_resolvable(tmp_path):
    (tmp_path / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:30 attempts:5\n")
    (tmp_path / "hosts").write_text("127.0.0.1 localhost\n93.184.216.34 listed.example\n")
    (tmp_path / "nsswitch.conf").write_text("hosts: files dns\n")
    run = subprocess.run(
        ["unshare", "--net", "--mount", "--propagation", "private", "--", sys.executable, "-c",
         SILENT_RESOLVER_SCENARIO, str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2],
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["silent {'TimeoutError'}", "listed 93.184.216.34", "children 1 queries True"]
