"""Pools of their own for blocking tool work, in child processes a call that is given up kills.

A page's extraction (trafilatura, pypdf: single C-heavy calls) and a host name's lookup (getaddrinfo: nsswitch,
/etc/hosts, then DNS, with resolv.conf's timeouts and retries) cannot be stopped in a thread: it runs on after its
call gave up. A resolver that never answers held each lookup's thread past its call's timeout, and enough of them
left no thread for any other lookup of the worker. Here a call the executor's timeout (or the lookup's own) gives up
on kills its child (child_pool), so it costs its timeout and no more, and a call that timed out while queued never
runs.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from heavy.tools.child_pool import ChildPool

EXTRACTION = ChildPool(size=4, name="heavy-extract")  # CPU work: more would not help
# Lookups wait on the network: a job's 8 trajectories at once. This module is all a DNS child imports (no httpx).
DNS = ChildPool(size=8, name="heavy-dns", memory_bytes=256 << 20)


def addresses_of(host: str, port: int) -> list[str]:
    """The addresses a TCP connection to host:port may use, as the C library resolves them (run in a DNS child)."""
    return [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


async def run_in(pool: ThreadPoolExecutor, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(function, *args, **kwargs))
