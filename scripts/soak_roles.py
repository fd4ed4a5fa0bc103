"""The processes scripts/soak.py drives, each in a process of its own so its RSS, fds and threads are its own:

    python scripts/soak_roles.py api REDIS_URL PORT STATS_FILE
    python scripts/soak_roles.py worker REDIS_URL INDEX STATS_FILE
    python scripts/soak_roles.py model PORT

`api` and `worker` are what `heavy serve` and `heavy worker` run (settings from HEAVY_* in the environment), plus a
task that writes, once a second, a JSON line of what the process holds inside (asyncio tasks, threads, and the
structures that grow per job or per stream) to STATS_FILE. `model` is a scripted OpenAI-compatible server: search,
search again, open the first page found, answer; a request without tools (a forced answer, the aggregator's) gets a
cited sentence. It answers at once: the soak measures the service, not a model."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import sys
import threading
import time
import tracemalloc
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # this checkout's packages, not the ones the venv was installed from

STATS_S = 1.0
TRACE_S, TRACE_TOP, TRACE_FRAMES = 60.0, 12, 6
ANSWER = "argparse parses command-line options [1]."
GONE_WORKER_S = 10.0  # the soak's minutes stand for a deployment's days: the consumers of workers gone go sooner


async def write_stats(path: str, inside) -> None:
    """Forever: `inside()` (a dict) with the process's asyncio tasks, threads and Python objects, as the last line of
    `path`."""
    with open(path, "a", encoding="utf-8") as out:
        while True:
            out.write(json.dumps({"t": time.time(), "tasks": len(asyncio.all_tasks()),
                                  "threads": threading.active_count(), "objects": len(gc.get_objects()),
                                  **inside()}) + "\n")
            out.flush()
            await asyncio.sleep(STATS_S)


async def trace_allocations(role: str) -> None:
    """With SOAK_TRACEMALLOC=ROLE:FILE, in that role's process: what it allocated and still holds, by line, grown
    since a minute in, written to FILE every TRACE_S (the lines a leak allocates from come first). Rewritten as it
    goes, not at the end: uvicorn re-raises the SIGTERM that stopped it once it has shut down."""
    traced, _, path = os.environ.get("SOAK_TRACEMALLOC", "").partition(":")
    if traced != role:
        return
    tracemalloc.start(TRACE_FRAMES)
    await asyncio.sleep(TRACE_S)
    baseline = tracemalloc.take_snapshot()
    while True:
        await asyncio.sleep(TRACE_S)
        grown = tracemalloc.take_snapshot().compare_to(baseline, "traceback")
        with open(path, "w", encoding="utf-8") as out:
            for stat in grown[:TRACE_TOP]:
                out.write(f"{stat.size_diff / 1024:+.1f} KiB in {stat.count_diff:+d} blocks\n")
                out.write("\n".join(stat.traceback.format()) + "\n\n")


async def api(redis_url: str, port: int, stats: str) -> None:
    import uvicorn

    from heavy.api import create_app
    from heavy.config import Settings

    app = create_app(Settings(redis_url=redis_url))

    def inside() -> dict:
        hub, streams = app.state.event_hub, app.state.open_streams
        if hub is None:  # the lifespan has not run yet
            return {}
        return {"hub_jobs": len(hub._readers), "hub_read_jobs": sum(len(read.jobs) for read in hub._reads),
                "hub_rings": len(hub._rings), "streams_open": len(streams._open),
                "stream_releases": len(streams._releases)}

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    background = [asyncio.create_task(write_stats(stats, inside)), asyncio.create_task(trace_allocations("api"))]
    await server.serve()
    for task in background:
        task.cancel()


async def worker(redis_url: str, index: str, stats: str) -> None:
    from heavy.config import Settings
    from heavy.llm import make_backend
    from heavy.store import Store
    from heavy.toolbox import service_tools
    from heavy.worker import Worker, runner

    runner.GONE_WORKER_S = GONE_WORKER_S
    settings = Settings(redis_url=redis_url)
    async with service_tools(settings, redis_url, index) as executor:
        store = Store.connect(redis_url, settings)
        backend = make_backend(settings)
        running = Worker(store, backend, executor, settings)  # a name of its own, as `heavy worker`'s

        def inside() -> dict:
            return {"running": len(running.running), "job_ids": len(running.job_ids), "acked": len(running.acked)}

        background = [asyncio.create_task(write_stats(stats, inside)),
                      asyncio.create_task(trace_allocations("worker"))]
        try:
            await running.run_until_signalled()
        finally:
            for task in background:
                task.cancel()
            await backend.aclose()
            await store.aclose()


def scripted_reply(body: dict) -> dict:
    """The model's next message for a chat request: tool calls by how many tool results the conversation holds."""
    messages = body["messages"]
    results = [m.get("content") or "" for m in messages if m["role"] == "tool"]
    if not body.get("tools"):
        return {"role": "assistant", "content": ANSWER}
    if len(results) < 2:
        call = ("search", {"query": ["command-line options", "parser arguments"][len(results)]})
    elif len(results) == 2 and (urls := re.findall(r"https?://[^\s)\]]+", " ".join(results))):
        call = ("open_page", {"url": urls[0]})
    else:
        call = ("answer", {"answer": "argparse", "confidence": 0.9})
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"c{len(results)}", "type": "function",
         "function": {"name": call[0], "arguments": json.dumps(call[1])}}]}


def model(port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def chat(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ClientDisconnect:  # the job was cancelled while its request was sent
            return JSONResponse({}, status_code=499)
        message = scripted_reply(body)
        return JSONResponse({"id": "soak", "object": "chat.completion", "created": int(time.time()),
                             "model": body.get("model", "soak"), "choices": [
                                 {"index": 0, "message": message,
                                  "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}],
                             "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}})

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "soak", "object": "model"}]})

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    role, *args = sys.argv[1:]
    if role == "api":
        asyncio.run(api(args[0], int(args[1]), args[2]))
    elif role == "worker":
        asyncio.run(worker(*args))
    else:
        model(int(args[0]))
