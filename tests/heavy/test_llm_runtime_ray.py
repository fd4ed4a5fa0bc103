"""heavy's runtime backend on Ray: two EP = 1 replicas of the tiny Kimi checkpoint behind the router (the same text
as one engine in process, a job kept on one replica's prefix cache by its prefix key, a rank killed mid-stream is a
retriable error and the job's next request goes to the other replica), the settings that select it, and Kimi's
tool-call format and the retries of router failures (over a stand-in engine)."""

import asyncio
import json
from dataclasses import fields, replace

import pydantic
import pytest

from heavy.config import Settings
from heavy.llm import ROUTER_FIELDS, make_backend
from heavy.llm.retry import RetryPolicy
from heavy.llm.runtime_backend import RuntimeBackend
from heavy.llm.types import LLMError, RetriableLLMError, Sampling, ToolCall
from runtime.engine.factory import load_tokenizer
from runtime.replica.errors import ReplicaDownError
from runtime.replica.router import RouterConfig
from runtime.replica.serving import UnsupportedReplicaModel
from runtime.sampling import SamplingParams
from runtime.server.chat import make_parser
from runtime.toolcalls import ToolCall as RuntimeToolCall
from runtime.toolcalls import render_tool_calls
from tests.heavy.test_llm_runtime import Engine
from tests.runtime.replica_fixtures import ENGINE, reference_engine

pytestmark = pytest.mark.anyio

REPLICAS, EP = 2, 1
# room for a completion long enough that a rank killed after its first delta fails it mid-way
ENGINE_CONFIG = replace(ENGINE, max_model_len=384, num_blocks=128)
FAULT_DEADLINE_S = 90  # the killed request ends (with an error) within this, never hangs
GREEDY = Sampling(temperature=0.0)
ROUTER = RouterConfig(stall_after_s=45.0)  # not the default: the router actor is seen to run with it


def _messages(topic: str) -> list[dict]:
    return [{"role": "user", "content": f"{topic}: name three prime numbers"}]


@pytest.fixture(scope="module")
def local_ray():
    """tests/runtime's session Ray when it is already up (the `ray_cluster` fixture, out of reach from here), else
    the same kind of private loopback instance for this module only."""
    import ray

    from runtime.replica.local_ray import start_local_ray

    if ray.is_initialized():
        yield ray
        return
    start_local_ray(num_cpus=8, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def backend(local_ray, tiny_kimi_path):
    backend = RuntimeBackend.on_replicas(tiny_kimi_path, REPLICAS, EP, ENGINE_CONFIG, dtype="float32",
                                         router={"stall_after_s": ROUTER.stall_after_s})
    yield backend
    backend.engine.shutdown()


async def _health(backend):
    return await backend.engine.router.check_health.remote()


async def _reused(backend) -> list[int]:
    return [h.prefix_cache.prompt_tokens_reused for h in await _health(backend)]


@pytest.mark.ray
@pytest.mark.slow
async def test_chat_on_replicas_is_the_in_process_engine_text_with_usage(backend, tiny_kimi_path):
    completion = await backend.chat(_messages("a"), None, GREEDY, max_tokens=8, request_id="job-a:0",
                                    prefix_key="job-a")
    prompt = backend.tokenizer.encode_chat(_messages("a"), None)
    (expected,) = reference_engine(tiny_kimi_path).generate([prompt], SamplingParams(temperature=0.0, max_tokens=8))
    parser = make_parser(backend.tokenizer)
    parsed = parser.feed(expected.text) + parser.finish()
    assert completion.content == parsed.content.strip() and completion.content
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (len(prompt),
                                                                                    len(expected.token_ids))
    deltas = [d async for d in backend.stream(_messages("a"), None, GREEDY, max_tokens=8, prefix_key="job-a")]
    assert "".join(d.content for d in deltas).strip() == completion.content
    assert deltas[-1].usage.cached_prompt_tokens > 0  # the same prompt again, on the same replica


@pytest.mark.ray
@pytest.mark.slow
async def test_one_job_stays_on_its_replica_and_reuses_its_prefix_cache(backend):
    jobs = ("job-1", "job-2")
    # two jobs at once: the least-loaded choice puts them on different replicas
    await asyncio.gather(*(backend.chat(_messages(job), None, GREEDY, max_tokens=4, prefix_key=job) for job in jobs))
    rises, cached = [], []
    for job in jobs:  # one at a time: least-loaded alone would send both to replica 0 (ties go to the first)
        before = await _reused(backend)
        completion = await backend.chat(_messages(job), None, GREEDY, max_tokens=4, prefix_key=job)
        rises.append([a - b for a, b in zip(await _reused(backend), before, strict=True)])
        cached.append(completion.usage.cached_prompt_tokens)
    assert all(c > 0 for c in cached)
    assert sorted(rises) == sorted([[cached[0], 0], [0, cached[1]]]) and rises[0] != rises[1]


@pytest.mark.ray
@pytest.mark.slow
async def test_a_rank_killed_mid_stream_is_retriable_and_the_job_moves_to_the_other_replica(backend, local_ray):
    stream = backend.stream(_messages("fault"), None, GREEDY, max_tokens=300, prefix_key="job-fault")
    await anext(stream)  # tokens have left the replica: the router cannot retry this request elsewhere
    in_flight = [h.in_flight for h in await _health(backend)]
    victim = in_flight.index(1)
    computed_before = [h.prefix_cache.prompt_tokens_computed for h in await _health(backend)]
    (rank,) = await backend.engine.replicas[victim].rank_actors.remote()
    local_ray.kill(rank, no_restart=False)
    with pytest.raises(RetriableLLMError, match="replica"):
        async with asyncio.timeout(FAULT_DEADLINE_S):
            async for _ in stream:
                pass

    completion = await asyncio.wait_for(
        backend.chat(_messages("fault"), None, GREEDY, max_tokens=4, prefix_key="job-fault"), FAULT_DEADLINE_S)
    assert completion.usage.completion_tokens == 4
    other = 1 - victim
    (health_other,) = [h for i, h in enumerate(await _health(backend)) if i == other]
    assert health_other.prefix_cache.prompt_tokens_computed > computed_before[other]


def test_settings_select_replicas_for_the_runtime_backend(monkeypatch, tiny_kimi_path):
    started = []

    def on_replicas(cls, folder, replicas, ep, engine=None, **options):
        started.append((folder, replicas, ep, engine.max_model_len, options["retry"].max_retries, options["router"]))
        return "frontend"

    monkeypatch.setattr(RuntimeBackend, "on_replicas", classmethod(on_replicas))
    settings = Settings(backend="runtime", model=str(tiny_kimi_path), runtime_replicas=3, runtime_ep=2,
                        context_tokens=1024, llm_max_retries=2)
    assert make_backend(settings) == "frontend"
    routed = settings.model_copy(update={"runtime_stall_after_s": 45.0, "runtime_unanswered_rounds": 4})
    assert make_backend(routed) == "frontend"
    assert started == [(tiny_kimi_path, 3, 2, 1024, 2, {}),
                       (tiny_kimi_path, 3, 2, 1024, 2, {"stall_after_s": 45.0, "unanswered_rounds": 4})]


def test_every_router_setting_is_a_routerconfig_field_and_a_heavy_setting():
    assert set(ROUTER_FIELDS) == {field.name for field in fields(RouterConfig)}
    assert {f"runtime_{name}" for name in ROUTER_FIELDS} <= set(Settings.model_fields)


@pytest.mark.parametrize("name, value", [
    ("HEAVY_RUNTIME_STALL_AFTER_S", "nan"), ("HEAVY_RUNTIME_HEALTH_TIMEOUT_S", "inf"),
    ("HEAVY_RUNTIME_HEALTH_INTERVAL_S", "0"), ("HEAVY_RUNTIME_UNANSWERED_ROUNDS", "0"),
    ("HEAVY_RUNTIME_MAX_PREFIX_KEYS", "-1"),
])
def test_the_routers_settings_are_finite_and_positive(name, value, monkeypatch):
    monkeypatch.setenv(name, value)
    with pytest.raises(pydantic.ValidationError, match=name.removeprefix("HEAVY_").lower()):
        Settings()


@pytest.mark.ray
@pytest.mark.slow
async def test_the_router_on_ray_runs_with_the_config_it_was_given(backend):
    assert await backend.engine.router.__ray_call__.remote(lambda router: router.config) == ROUTER


def test_a_dense_checkpoint_split_over_ranks_is_refused_before_ray_starts(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    with pytest.raises(UnsupportedReplicaModel, match="qwen2"):  # no experts to split: one rank per replica
        RuntimeBackend.load(str(tmp_path), replicas=1, ep=2)


async def test_kimi_tool_calls_are_read_with_kimi_s_parser_and_a_broken_one_is_an_llm_error(tiny_kimi_path):
    tokenizer = load_tokenizer(tiny_kimi_path)
    section = render_tool_calls([RuntimeToolCall("functions.search:0", "search", {"query": "ed wood"})])
    backend = RuntimeBackend(Engine(["Let me look. ", section[:30], section[30:]]), tokenizer)
    completion = await backend.chat(_messages("k"), None, GREEDY, max_tokens=64)
    assert completion.content == "Let me look."
    assert completion.tool_calls == (ToolCall("functions.search:0", "search", {"query": "ed wood"}),)
    assert completion.finish_reason == "tool_calls"

    broken = section.replace('{"query": "ed wood"}', "{not json")
    with pytest.raises(LLMError, match="malformed tool call"):
        await RuntimeBackend(Engine([broken]), tokenizer).chat(_messages("k"), None, GREEDY, max_tokens=64)
    with pytest.raises(LLMError, match="malformed tool call"):
        async for _ in RuntimeBackend(Engine([broken]), tokenizer).stream(_messages("k"), None, GREEDY, max_tokens=64):
            pass


class FailsFirst(Engine):
    """The router's answer when the replica serving a request loses a rank after its first tokens."""

    def __init__(self, pieces):
        super().__init__(pieces)
        self.failures, self.prefix_keys = 0, []

    async def generate(self, prompt, params, request_id, prefix_key=None):
        self.prefix_keys.append(prefix_key)
        if self.failures == 0:
            self.failures += 1
            raise ReplicaDownError("replica 0 failed after 3 token(s)")
        async for output in super().generate(prompt, params, request_id):
            yield output


async def test_a_replica_failure_is_retriable_and_chat_retries_it_with_its_policy(tiny_kimi_path):
    tokenizer = load_tokenizer(tiny_kimi_path)
    once = RuntimeBackend(FailsFirst(["fine"]), tokenizer, routes_by_prefix_key=True)
    with pytest.raises(RetriableLLMError, match="replica 0 failed"):
        await once.chat(_messages("r"), None, GREEDY, max_tokens=8, prefix_key="job-r")
    retrying = RuntimeBackend(FailsFirst(["fine"]), tokenizer, routes_by_prefix_key=True,
                              retry=RetryPolicy(max_retries=1, backoff_s=0.01, backoff_max_s=0.01))
    completion = await retrying.chat(_messages("r"), None, GREEDY, max_tokens=8, prefix_key="job-r")
    assert completion.content == "fine" and retrying.engine.failures == 1
    assert retrying.engine.prefix_keys == ["job-r", "job-r"]  # each attempt routed by the job
