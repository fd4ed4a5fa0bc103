"""Heavy mode on the embedded model (Qwen2.5-Coder-0.5B through our runtime engine) over a small local corpus:
one trajectory, then one 8-trajectory job. Budgets are tiny so this fits a 2-core CPU; what is checked is that
the real model drives the real loop, tools and aggregation end to end, not how good its answers are."""

import json

import pytest

from heavy.agent import Trajectory, TrajectoryLimits
from heavy.events import MemorySink, ReportReady, TrajectoryDone, TrajectoryStep
from heavy.scheduler import JobSpec, Scheduler
from tests.heavy.e2e_corpus import QUESTION, one_search_trajectory, small_corpus_tools

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture(scope="module")
def backend():
    from heavy.llm.runtime_backend import RuntimeBackend

    llm = RuntimeBackend.load("qwen2.5-coder-0.5b", context_tokens=4096)
    yield llm
    llm.engine.shutdown()


@pytest.fixture(scope="module")
def executor(tmp_path_factory):
    with small_corpus_tools(tmp_path_factory.mktemp("corpus")) as tools:
        yield tools


async def test_one_trajectory_on_the_embedded_model(backend, executor):
    spec = one_search_trajectory("e2e-one")
    sink = MemorySink()
    result = await Trajectory(spec, backend, executor, sink=sink).run()
    print(json.dumps(result.summary(), indent=1))
    assert 1 <= len(result.steps) <= 2 and result.stop_reason in ("answered", "max_steps", "no_progress")
    assert result.answer  # a step budget ends with a forced short answer
    assert result.usage.prompt_tokens > 500 and result.usage.completion_tokens > 0
    steps = sink.of_type(TrajectoryStep)
    assert len(steps) >= len(result.steps) and sink.events[-1] == sink.of_type(TrajectoryDone)[0]
    assert all(s.url.startswith("http://127.0.0.1:") for s in result.evidence)


async def test_eight_trajectory_job_on_the_embedded_model(backend, executor):
    limits = TrajectoryLimits(max_steps=1, step_tokens=48, final_answer_tokens=16, context_tokens=4096)
    spec = JobSpec(job_id="e2e-eight", question=QUESTION, mode="answer", trajectories=8,
                   allowed_tools=frozenset({"search"}), limits=limits, deadline_s=1800, early_stop_k=8)
    sink = MemorySink()
    result = await Scheduler(backend, executor).run(spec, sink=sink)
    print(result.to_json())
    assert len(result.trajectories) == 8 and result.status == "done"
    assert len({(t.temperature, t.seed) for t in result.trajectories}) == 8
    assert sum(t.answered for t in result.trajectories) >= 6 and result.answer
    assert sum(result.votes.values()) == sum(t.answered for t in result.trajectories)
    # the 8 share the system prompt, tools and question: the engine's prefix cache serves most of it
    assert result.usage.cached_prompt_tokens > 0.5 * result.usage.prompt_tokens
    assert len(sink.of_type(TrajectoryDone)) == 8 and sink.of_type(ReportReady)[0].answer == result.answer


async def test_without_the_prefix_cache_a_repeated_request_is_prefilled_in_full_and_reads_the_same(backend):
    from heavy.llm.runtime_backend import RuntimeBackend
    from heavy.llm.types import Sampling

    # a prompt of several KV blocks, so the cache (when on) has whole blocks to serve
    facts = " ".join(f"Fact {i}: the tower is tall." for i in range(10))
    messages = [{"role": "user", "content": f"{QUESTION} {facts}"}]
    greedy = Sampling(temperature=0.0, seed=0)
    cached = [await backend.chat(messages, None, greedy, max_tokens=8) for _ in range(2)]
    assert cached[1].usage.cached_prompt_tokens > 0.5 * cached[1].usage.prompt_tokens
    uncached_backend = RuntimeBackend.load("qwen2.5-coder-0.5b", context_tokens=4096, prefix_cache=False)
    try:
        uncached = [await uncached_backend.chat(messages, None, greedy, max_tokens=8) for _ in range(2)]
    finally:
        uncached_backend.engine.shutdown()
    assert [c.usage.cached_prompt_tokens for c in uncached] == [0, 0]
    assert uncached[0].content == uncached[1].content  # the same shapes each time: the same numbers


async def test_the_runtime_backend_speculates_on_copied_text_unless_turned_off(backend):
    from heavy.llm.runtime_backend import RuntimeBackend
    from heavy.llm.types import Sampling

    messages = [{"role": "user", "content": "Copy exactly: the tower is 300 metres tall and was built in 1889."}]
    greedy = Sampling(temperature=0.0, seed=0)
    stats = backend.engine.engine.speculation
    accepted = stats.accepted
    speculated = await backend.chat(messages, None, greedy, max_tokens=24)
    assert stats.accepted > accepted  # the default engine took drafts copied from the prompt
    plain_backend = RuntimeBackend.load("qwen2.5-coder-0.5b", context_tokens=4096, speculative_tokens=0)
    try:
        plain = await plain_backend.chat(messages, None, greedy, max_tokens=24)
        assert plain_backend.engine.engine.speculation.drafted == 0
    finally:
        plain_backend.engine.shutdown()
    assert "1889" in speculated.content and speculated.content == plain.content


async def test_the_claim_check_on_the_embedded_model_puts_every_cited_claim_to_it(backend):
    from heavy.aggregate.claim_check import check_claims
    from tests.heavy.fakes import source

    loops = source("http://corpus/loops", "A break statement terminates the loop without executing the else clause. "
                   "A continue statement skips the rest of the suite and continues with the next item.")
    claims = ["A break statement terminates the loop without executing the else clause [1].",
              "A continue statement skips the else clause of the loop [1]."]
    checked = await check_claims("\n".join(f"- {c}" for c in claims), [loops], {loops.url: loops.snippet}, backend)
    print(checked)
    # what a 0.5B model says is not checked here (scripts/probe_claim_check.py measures it): that it was asked about
    # each claim, and that each claim either stands or is listed as refuted
    assert checked.usage.prompt_tokens > 2 * 40 and checked.usage.completion_tokens >= 2
    assert sorted([*checked.refuted, *(ln.removeprefix("- ") for ln in checked.body.splitlines())]) == sorted(claims)


async def test_the_embedded_model_gives_alternatives_and_ranks_a_claim_above_its_negation_when_the_page_says_it(
        backend):
    from heavy.aggregate.claim_check import CHECK_PROMPT, supports
    from heavy.llm.types import Sampling

    passage = "The Eiffel Tower was completed in 1889 as the entrance arch to the World's Fair."
    prompt = CHECK_PROMPT.format(passage=passage, claim="The tower was finished in 1889.")
    reply = await backend.chat([{"role": "user", "content": prompt}], None, Sampling(top_logprobs=5), max_tokens=2)
    first = reply.top_logprobs[0]
    assert len(reply.top_logprobs) == reply.usage.completion_tokens and len(first) == 5
    assert [lp for _, lp in first] == sorted((lp for _, lp in first), reverse=True) and first[0][1] <= 0.0
    assert reply.content.startswith(first[0][0].strip())  # greedy: the first alternative is the token taken
    # the 0.5B says "no" to most claims; against its negation (probe: shares 0.56 and 0.27) the right one stands
    assert (await supports(backend, passage, "The tower was finished in 1889."))[0] is True
    assert (await supports(backend, passage, "The tower was not finished in 1889."))[0] is False
