"""Pools of their own for blocking tool work.

A page's extraction (trafilatura, pypdf: single C-heavy calls) runs in child processes (child_pool): a call the
executor's timeout gives up on kills its child, so a hostile page costs its call's timeout and no more. A DNS lookup
cannot be moved out so cheaply (nsswitch and /etc/hosts must hold) and a thread cannot be stopped: it runs on after
its call gave up. On asyncio's default pool (min(32, CPUs + 4) threads: 6 on two cores) a DNS outage held every
thread, and all other `to_thread` work of the process waited behind them: the LLM backend renders each prompt there,
so every trajectory of every job stalled. Here at most so many run at once, and a call that timed out while queued
never runs.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from heavy.tools.child_pool import ChildPool

EXTRACTION = ChildPool(size=4, name="heavy-extract")  # CPU work: more would not help
DNS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="heavy-dns")  # waits on the network: a job's 8 at once


async def run_in(pool: ThreadPoolExecutor, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(function, *args, **kwargs))
