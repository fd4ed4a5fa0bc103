"""Blocking work that must stop when its call is given up: long-lived child processes, one call at a time each.

A thread cannot be stopped: trafilatura on a hostile page held its thread for as long as it took. Here the work runs
in a child process; a call cancelled while it runs (the executor's timeout) kills its child, which frees the thread
waiting on it at once, and a later call starts a new child (about a second: the interpreter and the function's
module). Children start when first needed, at most `size` of them, and end when this process does (their pipe
closes). Functions and arguments cross by pickle: a module-level function, plain data.

A child gets none of our environment but what the interpreter and locale read (no API keys, tokens or Redis URLs
for a parser's bug to leak), and a cap on its address space: a page that makes a parser balloon fails its call
(MemoryError, or ChildDied) instead of calling the OOM killer onto the machine, which may pick the worker.
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
                "serve(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))")
CHILD_ENV_NAMES = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")  # all a child inherits: no secrets
# A child peaked at ~330 MB of address space on a hostile page of the fetch's 2 MB; a PDF whose streams inflate
# without end is what the cap stops
CHILD_MEMORY_BYTES = 1 << 30


class ChildDied(RuntimeError):
    """The child process ended before it answered: killed for its call's timeout, or crashed (out of memory)."""


def serve(requests_fd: int, replies_fd: int, memory_bytes: int) -> None:
    """The child's loop: call what arrives, send back (True, result) or (False, exception), until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal is the parent's to handle
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))  # here, not in a preexec_fn: threads fork us
    requests, replies = Connection(requests_fd, writable=False), Connection(replies_fd, readable=False)
    while True:
        try:
            function, args = requests.recv()
        except EOFError:
            return
        try:
            reply = (True, function(*args))
        except Exception as exc:  # the caller gets it raised
            reply = (False, exc)
        try:
            replies.send(reply)
        except Exception as exc:  # a result or error that does not pickle
            replies.send((False, RuntimeError(f"{type(exc).__name__}: {exc}")))


class ChildProcess:
    """A child serving one call at a time over two pipes."""

    def __init__(self, memory_bytes: int) -> None:
        requests_read, requests_write = os.pipe()
        replies_read, replies_write = os.pipe()
        self._process = subprocess.Popen(
            [sys.executable, "-c", CHILD_SOURCE, json.dumps(sys.path), str(requests_read), str(replies_write),
             str(memory_bytes)],
            stdin=subprocess.DEVNULL, pass_fds=(requests_read, replies_write),
            env={name: os.environ[name] for name in CHILD_ENV_NAMES if name in os.environ},
        )
        os.close(requests_read)
        os.close(replies_write)  # the child holds the only write end: its death is our end of file
        self._requests = Connection(requests_write, readable=False)
        self._replies = Connection(replies_read, writable=False)

    def call(self, function: Callable[..., Any], args: tuple) -> Any:
        """Blocks until the child answers; ChildDied if it ends first."""
        try:
            self._requests.send((function, args))
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
    """Up to `size` calls at once, each in a child of its own (its address space at most `memory_bytes`), each
    waited on by a thread of the pool's."""

    def __init__(self, size: int, name: str, memory_bytes: int = CHILD_MEMORY_BYTES) -> None:
        self.size, self.memory_bytes = size, memory_bytes
        self._waiters = ThreadPoolExecutor(max_workers=size, thread_name_prefix=name)  # one per running call
        self._idle: list[ChildProcess] = []
        self._lock = threading.Lock()

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        """`function(*args)` in a child; cancelling this kills the child if the call had started."""
        call = _Call()
        waiting = asyncio.get_running_loop().run_in_executor(self._waiters, self._run, call, function, args)
        try:
            return await waiting
        except asyncio.CancelledError:
            call.cancel()
            raise

    def _run(self, call: _Call, function: Callable[..., Any], args: tuple) -> Any:
        with call.lock:
            if call.cancelled:  # given up while queued: never runs
                return None
            call.child = child = self._take()
        try:
            return child.call(function, args)
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
        return ChildProcess(self.memory_bytes)

    def _give_back(self, child: ChildProcess) -> None:
        with self._lock:
            self._idle.append(child)
