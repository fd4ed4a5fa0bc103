"""heavy through its `openai` backend against our own `python -m runtime serve` (the embedded model, in a process
of its own on loopback): one real trajectory, then one 2-trajectory job in report mode. Budgets are tiny; what is
checked is that the HTTP path carries tool calls, usage and the report pass end to end, not answer quality."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from heavy.agent import Trajectory, TrajectoryLimits
from heavy.aggregate import AggregationConfig
from heavy.events import MemorySink, ToolResultEvent
from heavy.llm.openai_backend import OpenAIBackend
from heavy.llm.retry import RetryPolicy
from heavy.llm.types import Sampling
from heavy.scheduler import JobSpec, Scheduler
from tests.heavy.e2e_corpus import QUESTION, one_search_trajectory, small_corpus_tools
from tests.net import free_port
from tests.processes import stop_process

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "qwen2.5-coder-0.5b"
STARTUP_S = 300  # a fresh HEAVY_HOME converts the model first (about a minute)
CITATION = re.compile(r"\[(\d+)\]")


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    """`python -m runtime serve` on a free loopback port, the model loaded once for the module."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "runtime", "serve", "--model", MODEL, "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, log_path)
        yield url
    finally:
        stop_process(process, timeout_s=30)


def _wait_healthy(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"runtime serve exited with {process.returncode}:\n{log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    pytest.fail(f"runtime serve not healthy after {STARTUP_S} s:\n{log_path.read_text()[-2000:]}")


class RecordingTransport(httpx.AsyncBaseTransport):
    """The real HTTP transport, keeping every request so a test can check the headers heavy sent."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
def transport():
    return RecordingTransport()


@pytest.fixture
async def backend(server_url, transport):
    llm = OpenAIBackend(f"{server_url}/v1", MODEL, timeout_s=600, retry=RetryPolicy(max_retries=0),
                        transport=transport)
    yield llm
    await llm.aclose()


@pytest.fixture(scope="module")
def executor(tmp_path_factory):
    with small_corpus_tools(tmp_path_factory.mktemp("corpus")) as tools:
        yield tools


def fetched_urls(sink: MemorySink) -> set[str]:
    """Every page a tool returned, as the tool-result events recorded them."""
    return {source["url"] for event in sink.of_type(ToolResultEvent) for source in event.sources}


async def test_one_trajectory_through_the_openai_backend(backend, executor):
    spec = one_search_trajectory("serve-one")
    sink = MemorySink()
    result = await Trajectory(spec, backend, executor, sink=sink).run()
    print(json.dumps(result.summary(), indent=1))
    assert result.error is None and result.stop_reason in ("answered", "max_steps", "no_progress")
    assert sum(len(step.calls) for step in result.steps) >= 1  # structured tool calls came back over HTTP
    assert result.answer
    assert result.usage.prompt_tokens > 500 and result.usage.completion_tokens > 0
    assert result.evidence and {s.url for s in result.evidence} <= fetched_urls(sink)


async def test_streamed_tool_call_arrives_whole(backend, executor):
    messages = [{"role": "user", "content": "Search the corpus: what nationality was Ed Wood?"}]
    deltas = [d async for d in backend.stream(messages, executor.specs({"search"}), Sampling(temperature=0.0),
                                              max_tokens=48)]
    calls = [call for d in deltas for call in d.tool_calls]
    assert [call.name for call in calls] == ["search"] and "wood" in str(calls[0].arguments).lower()
    assert deltas[-1].usage is not None and deltas[-1].usage.prompt_tokens > 0
    assert any(d.finish_reason == "tool_calls" for d in deltas)


async def test_report_job_through_the_openai_backend(backend, executor, transport):
    limits = TrajectoryLimits(max_steps=2, step_tokens=48, final_answer_tokens=16, context_tokens=4096)
    spec = JobSpec(job_id="serve-report", question=QUESTION, mode="report", trajectories=2,
                   allowed_tools=frozenset({"search"}), limits=limits, deadline_s=900)
    sink = MemorySink()
    scheduler = Scheduler(backend, executor, aggregation=AggregationConfig(report_tokens=96))
    result = await scheduler.run(spec, sink=sink)
    print(result.to_json())
    assert result.status == "done" and len(result.trajectories) == 2
    assert all(t.error is None for t in result.trajectories)
    assert result.markdown.strip() and fetched_urls(sink)
    # the markdown's [n] are exactly the numbered sources, and each of them is a page a trajectory fetched
    assert {int(n) for n in CITATION.findall(result.markdown)} == set(range(1, len(result.sources) + 1))
    assert {s.url for s in result.sources} <= fetched_urls(sink)
    # every trajectory request carried the job id as prefix key; their shared system prompt, tools and question
    # came back from the server's prefix cache
    steps = [r for r in transport.requests if r.headers.get("x-request-id", "").startswith(f"{spec.job_id}:")]
    assert steps and all(r.headers["x-prefix-key"] == spec.job_id for r in steps)
    assert result.usage.prompt_tokens > 0 and result.usage.cached_prompt_tokens > 0
