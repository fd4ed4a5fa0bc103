"""Blocking work that must stop when its call is given up: long-lived child processes, one call at a time each.

A thread cannot be stopped: trafilatura on a hostile page held its thread for as long as it took. Here the work runs
in a child process; a call cancelled while it runs (the executor's timeout) kills its child, which frees the thread
waiting on it at once, and a later call starts a new child (about a second: the interpreter and the function's
module). Children start when first needed, at most `size` of them, and end when this process does (their pipe
closes). Functions and arguments cross by pickle: a module-level function, plain data.

A child gets none of our environment but what the interpreter and locale read (no API keys, tokens or Redis URLs
for a parser's bug to leak), and a cap on its address space, set for each call (a caller whose input may be larger
asks for more): a page that makes a parser balloon fails its call (MemoryError, or ChildDied) instead of calling the
OOM killer onto the machine, which may pick the worker. The cap is the soft limit, so a later call may raise it: it
stops a parser's data from ballooning, not code of its own (what runs here is ours).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

# The child takes our sys.path (a checkout or a test's root imports as here) and serves on the two fds it is given.
CHILD_SOURCE = ("import json, sys; sys.path[:] = json.loads(sys.argv[1]); from heavy.tools.child_pool import serve; "
                "serve(int(sys.argv[2]), int(sys.argv[3]))")
# All a child inherits: no secrets. The resolver's own (RES_OPTIONS...) keep a DNS child's lookups as ours were.
CHILD_ENV_NAMES = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "RES_OPTIONS", "LOCALDOMAIN", "HOSTALIASES")
# A call's cap unless it asks for another: a child peaked at ~300 MB of address space on a hostile page of the
# fetch's 2 MB, and pypdf inflates a stream to 75 MB; a PDF whose streams inflate without end is what it stops
CHILD_MEMORY_BYTES = 1 << 30


class ChildDied(RuntimeError):
    """The child process ended before it answered: killed for its call's timeout, or crashed (out of memory)."""


def serve(requests_fd: int, replies_fd: int) -> None:
    """The child's loop: call what arrives under its address-space cap, send back (True, result) or
    (False, exception), until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal is the parent's to handle
    requests, replies = Connection(requests_fd, writable=False), Connection(replies_fd, readable=False)
    while True:
        try:
            function, args, memory_bytes = requests.recv()
        except EOFError:
            return
        try:
            _cap_address_space(memory_bytes)  # this call's: the last call's may have been lower or higher
            reply = (True, function(*args))
        except Exception as exc:  # the caller gets it raised
            reply = (False, exc)
        try:
            replies.send(reply)
        except Exception as exc:  # a result or error that does not pickle
            replies.send((False, RuntimeError(f"{type(exc).__name__}: {exc}")))


def _cap_address_space(memory_bytes: int) -> None:
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    soft = memory_bytes if hard == resource.RLIM_INFINITY else min(memory_bytes, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


class ChildProcess:
    """A child serving one call at a time over two pipes."""

    def __init__(self) -> None:
        requests_read, requests_write = os.pipe()
        replies_read, replies_write = os.pipe()
        self._process = subprocess.Popen(
            [sys.executable, "-c", CHILD_SOURCE, json.dumps(sys.path), str(requests_read), str(replies_write)],
            stdin=subprocess.DEVNULL, pass_fds=(requests_read, replies_write),
            env={name: os.environ[name] for name in CHILD_ENV_NAMES if name in os.environ},
        )
        os.close(requests_read)
        os.close(replies_write)  # the child holds the only write end: its death is our end of file
        self._requests = Connection(requests_write, readable=False)
        self._replies = Connection(replies_read, writable=False)

    def call(self, function: Callable[..., Any], args: tuple, memory_bytes: int) -> Any:
        """Blocks until the child answers; ChildDied if it ends first."""
        try:
            self._requests.send((function, args, memory_bytes))
            ok, value = self._replies.recv()
        except (EOFError, BrokenPipeError) as exc:
            raise ChildDied(f"the child process ended (exit code {self._process.wait()})") from exc
        if not ok:
            raise value
        return value

    def alive(self) -> bool:
        return self._process.poll() is None

    def kill(self) -> None:
        self._process.kill()

    def close(self) -> None:
        self.kill()
        self._process.wait()
        self._requests.close()
        self._replies.close()


class _Call:
    """A call's child, so a cancellation from the event loop can kill it while a pool thread waits on it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.child: ChildProcess | None = None
        self.cancelled = False

    def cancel(self) -> None:
        with self.lock:
            self.cancelled = True
            if self.child is not None:
                self.child.kill()


class ChildPool:
    """Up to `size` calls at once, each in a child of its own (its address space at most `memory_bytes` unless the
    call says), each waited on by a thread of the pool's."""

    def __init__(self, size: int, name: str, memory_bytes: int = CHILD_MEMORY_BYTES) -> None:
        self.size, self.memory_bytes = size, memory_bytes
        self._waiters = ThreadPoolExecutor(max_workers=size, thread_name_prefix=name)  # one per running call
        self._idle: list[ChildProcess] = []
        self._lock = threading.Lock()

    async def run(self, function: Callable[..., Any], *args: Any, memory_bytes: int | None = None) -> Any:
        """`function(*args)` in a child whose address space is capped at `memory_bytes` (default: the pool's);
        cancelling this kills the child if the call had started."""
        call = _Call()
        waiting = asyncio.get_running_loop().run_in_executor(self._waiters, self._run, call, function, args,
                                                             memory_bytes or self.memory_bytes)
        try:
            return await waiting
        except asyncio.CancelledError:
            call.cancel()
            raise

    def _run(self, call: _Call, function: Callable[..., Any], args: tuple, memory_bytes: int) -> Any:
        with call.lock:
            if call.cancelled:  # given up while queued: never runs
                return None
            call.child = child = self._take()
        try:
            return child.call(function, args, memory_bytes)
        finally:
            with call.lock:
                call.child = None
                if child.alive() and not call.cancelled:
                    self._give_back(child)
                else:
                    child.close()

    def _take(self) -> ChildProcess:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return ChildProcess()

    def _give_back(self, child: ChildProcess) -> None:
        with self._lock:
            self._idle.append(child)
