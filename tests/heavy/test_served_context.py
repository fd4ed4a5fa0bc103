"""heavy sizes its prompts to the server's context when that is smaller than HEAVY_CONTEXT_TOKENS: the openai backend
reads `max_model_len` from /v1/models once (vLLM's field, which `runtime serve` reports), and a job's trajectories
are fitted to it. Servers that report none (OpenAI, Moonshot) keep HEAVY_CONTEXT_TOKENS."""

import asyncio
import json
import logging
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from heavy.agent import Trajectory, TrajectoryLimits
from heavy.events import MemorySink
from heavy.llm.openai_backend import OpenAIBackend
from heavy.llm.runtime_backend import RuntimeBackend
from heavy.llm.served import usable_context
from heavy.scheduler import Scheduler
from heavy.tools.base import ToolExecutor
from tests.heavy.fakes import DictSearch, ScriptedBackend
from tests.heavy.test_llm_openai_context import REFUSALS, strict_server
from tests.heavy.test_scheduler import PAGES, researcher, spec
from tests.runtime.test_server import CONTEXT, MODEL_NAME, server

__all__ = ["server"]  # the tiny model's server (tests/runtime)

pytestmark = pytest.mark.anyio


async def test_the_backend_reads_our_servers_context_and_a_larger_setting_is_clamped_to_it(server, caplog):
    llm = OpenAIBackend(server[0] + "/v1", MODEL_NAME)
    try:
        assert await llm.served_context() == CONTEXT
        with caplog.at_level(logging.WARNING, logger="heavy.llm.served"):
            assert await usable_context(llm, 8192) == CONTEXT
        assert f"the server's context is {CONTEXT} tokens" in caplog.text
        assert await usable_context(llm, CONTEXT - 1) == CONTEXT - 1  # a smaller setting stands
    finally:
        await llm.aclose()


async def test_a_server_that_reports_no_context_keeps_the_setting():
    """OpenAI's /v1/models has no max_model_len; the backend goes on as before."""
    async with strict_server(REFUSALS["openai, vllm < 0.10"]) as (url, _):
        llm = OpenAIBackend(url, "m")
        try:
            assert await llm.served_context() is None
            assert await usable_context(llm, 8192) == 8192
        finally:
            await llm.aclose()


async def test_a_server_not_reachable_yet_is_asked_again_by_the_next_job():
    """A worker may take its first job while its vLLM still loads: that failed read must not stand for good."""
    connections = []

    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        connections.append(1)
        if len(connections) > 1:  # the first connection is dropped unanswered, as by a server not up yet
            payload = json.dumps({"data": [{"id": "m", "max_model_len": 4096}]}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                         b"connection: close\r\n\r\n%b" % (len(payload), payload))
            await writer.drain()
        writer.close()

    listening = await asyncio.start_server(handle, "127.0.0.1", 0)
    llm = OpenAIBackend(f"http://127.0.0.1:{listening.sockets[0].getsockname()[1]}/v1", "m")
    try:
        assert await llm.served_context() is None
        assert await llm.served_context() == 4096
        assert await llm.served_context() == 4096 and len(connections) == 2  # an answer is kept
    finally:
        await llm.aclose()
        listening.close()
        await listening.wait_closed()


@dataclass
class SmallServer(ScriptedBackend):
    served: int = 4096

    async def served_context(self) -> int:
        return self.served


async def test_a_jobs_trajectories_fit_their_prompts_to_the_servers_smaller_context():
    seen = []

    def capture(trajectory_spec, *args, **kwargs):
        seen.append(trajectory_spec.limits.context_tokens)
        return Trajectory(trajectory_spec, *args, **kwargs)

    job = spec(trajectories=2, limits=TrajectoryLimits(max_steps=4, context_tokens=8192))
    await Scheduler(SmallServer(researcher()), ToolExecutor([DictSearch(PAGES)]),
                    trajectory_factory=capture).run(job, sink=MemorySink())
    assert seen == [4096, 4096]


async def test_the_runtime_backend_reports_the_context_its_engine_holds():
    # an engine whose KV cache held less than HEAVY_CONTEXT_TOKENS: a job's prompts fit the engine's context
    in_process = RuntimeBackend(SimpleNamespace(engine=SimpleNamespace(max_model_len=1024)), tokenizer=None)
    behind_a_router = RuntimeBackend(SimpleNamespace(max_model_len=2048), tokenizer=None)
    assert await usable_context(in_process, 8192) == 1024
    assert await usable_context(behind_a_router, 8192) == 2048
    assert await usable_context(RuntimeBackend(SimpleNamespace(), tokenizer=None), 8192) == 8192
