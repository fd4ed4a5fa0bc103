"""Thread pools of their own for blocking tool work that cannot be cancelled.

A DNS lookup or a page's extraction runs on after the executor's timeout gave up on its call: a thread cannot be
stopped. On asyncio's default pool (min(32, CPUs + 4) threads: 6 on two cores) a few slow pages or a DNS outage held
every thread, and all other `to_thread` work of the process waited behind them: the LLM backend renders each
prompt there, so every trajectory of every job stalled. Here at most so many run at once, and a call that timed out
while queued never runs.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

EXTRACTION = ThreadPoolExecutor(max_workers=4, thread_name_prefix="heavy-extract")  # CPU work: more would not help
DNS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="heavy-dns")  # waits on the network: a job's 8 at once


async def run_in(pool: ThreadPoolExecutor, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(function, *args, **kwargs))
