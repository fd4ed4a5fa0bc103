"""The engine requests of one API request (its prompts, `n` choices each) run together. Leaving early (a failure,
the client gone) cancels them all, and a cancelled request is aborted in the engine (its blocks freed at once)."""

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from typing import Any

from runtime.sampling import SamplingParams

_END = object()


def choice_params(params: SamplingParams, choice: int) -> SamplingParams:
    """The sampling of a request's `choice`-th choice: a seeded request seeds choice j with seed + j, so that its
    choices differ and each is what that seed gives alone."""
    return dataclasses.replace(params, seed=params.seed + choice) if params.seed is not None and choice else params


async def run_all(streams: Sequence[AsyncIterator[Any]]) -> None:
    """Run every stream to its end, together; the first failure stops the others and is raised."""

    async def drain(stream: AsyncIterator[Any]) -> None:
        async for _ in stream:
            pass

    tasks = [asyncio.create_task(drain(s)) for s in streams]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


async def interleaved(streams: Sequence[AsyncIterator[Any]]) -> AsyncIterator[Any]:
    """The streams' items as they come, interleaved; the first failure stops the others and is raised."""
    queue: asyncio.Queue = asyncio.Queue()

    async def produce(stream: AsyncIterator[Any]) -> None:
        try:
            async for item in stream:
                queue.put_nowait(item)
            queue.put_nowait(_END)
        except Exception as exc:
            queue.put_nowait(exc)

    tasks = [asyncio.create_task(produce(s)) for s in streams]
    try:
        ended = 0
        while ended < len(tasks):
            item = await queue.get()
            if isinstance(item, Exception):
                raise item
            if item is _END:
                ended += 1
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
