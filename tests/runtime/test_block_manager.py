"""Block manager and scheduler bookkeeping, without a model: steps are simulated by the scheduler's own accounting."""

from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.engine.block_manager import BlockManager
from runtime.engine.config import EngineConfig
from runtime.engine.scheduler import Scheduler
from runtime.engine.sequence import FinishReason, Sequence
from runtime.sampling import SamplingParams

BLOCK = 4


def seq(tokens, rid="r"):
    return Sequence(rid, list(tokens), SamplingParams(temperature=0.0))


def test_prefix_blocks_are_reused_after_free():
    bm = BlockManager(num_blocks=8, block_size=BLOCK)
    first = seq(range(10))
    bm.admit(first, bm.reusable_blocks(first))
    bm.grow(first, 10)
    first.num_computed_tokens = 10
    bm.commit(first, 10)
    blocks = list(first.block_table)
    bm.free_sequence(first)
    second = seq(list(range(8)) + [99, 98, 97])
    reused = bm.reusable_blocks(second)
    assert reused == blocks[:2]  # the two full blocks of the shared 8 tokens
    bm.admit(second, reused)
    assert second.num_computed_tokens == 8 and second.num_cached_prompt_tokens == 8
    assert bm.stats.prompt_tokens_reused == 8 and bm.stats.prompt_tokens_computed == 10


def test_a_fully_cached_prompt_still_computes_its_last_token():
    bm = BlockManager(num_blocks=8, block_size=BLOCK)
    first = seq(range(8))
    bm.admit(first, [])
    bm.grow(first, 8)
    first.num_computed_tokens = 8
    bm.commit(first, 8)
    bm.free_sequence(first)
    assert len(bm.reusable_blocks(seq(range(8)))) == 1  # block 2 holds the last token: recomputed for logits


def test_eviction_takes_the_least_recently_freed_cached_block():
    bm = BlockManager(num_blocks=2, block_size=BLOCK)
    old, new = seq(range(5), "old"), seq(range(100, 105), "new")
    for s in (old, new):
        bm.admit(s, [])
        bm.grow(s, 4)
        s.num_computed_tokens = 4
        bm.commit(s, 4)
    bm.free_sequence(old)
    bm.free_sequence(new)
    third = seq(range(200, 205), "third")
    bm.admit(third, [])
    bm.grow(third, 4)  # evicts old's block, keeps new's
    assert bm.reusable_blocks(seq(range(100, 105))) and not bm.reusable_blocks(seq(range(5)))


def check_invariants(sched: Scheduler, live: list[Sequence]) -> None:
    bm = sched.block_manager
    refs = [0] * len(bm.blocks)
    for s in live:
        assert len(set(s.block_table)) == len(s.block_table), "a sequence holds a block twice"
        for b in s.block_table:
            refs[b] += 1
    for block in bm.blocks:
        assert block.ref_count == refs[block.block_id], f"block {block.block_id}: ref_count vs holders"
        assert (block.ref_count == 0) == (block.block_id in bm.free), f"block {block.block_id}: free list"
    for h, b in bm.hash_to_block.items():
        assert bm.blocks[b].hash == h


MAX_DRAIN_STEPS = 2000


def simulated_step(sched: Scheduler, live: list[Sequence], num_blocks: int) -> None:
    """One engine step without a model: every sequence that samples appends 7s; one that checked speculative drafts
    (completions of 7s soon draft 7s) takes the first half of them, then one token, as LLMEngine.step does."""
    scheduled = sched.schedule()
    drafts = {s.seq_id: s.drop_drafts() for s in scheduled}
    for s in sched.after_step(scheduled):
        taken = drafts[s.seq_id][: len(drafts[s.seq_id]) // 2]
        for i, token in enumerate([*taken, 7]):
            s.append_token(token)
            s.num_computed_tokens += i < len(taken)
            if s.num_completion_tokens >= s.params.max_tokens or len(s) >= num_blocks * BLOCK:
                sched.finish(s, FinishReason.LENGTH)
                live.remove(s)
                break


events = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(1, 30), st.integers(1, 12), st.integers(0, 3)),
        st.tuples(st.just("abort"), st.integers(0, 50)),
        st.tuples(st.just("step"), st.integers(1, 4)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(events=events, num_blocks=st.integers(8, 24), prefix_cache=st.booleans())
def test_random_arrival_abort_finish_never_leaks_double_frees_or_stalls(events, num_blocks, prefix_cache):
    config = EngineConfig(block_size=BLOCK, num_blocks=num_blocks, max_num_seqs=4, max_num_batched_tokens=16,
                          enable_prefix_cache=prefix_cache)
    sched = Scheduler(config, num_blocks)
    live: list[Sequence] = []
    added = 0
    for event in events:
        if event[0] == "add":
            _, prompt_len, max_tokens, family = event
            prompt = [family] * min(prompt_len, (num_blocks * BLOCK) // 2) + [added]  # shared prefixes per family
            s = Sequence(f"r{added}", prompt, SamplingParams(temperature=0.0, max_tokens=max_tokens))
            added += 1
            sched.add(s)
            live.append(s)
        elif event[0] == "abort" and live:
            s = live.pop(event[1] % len(live))
            sched.finish(s, FinishReason.ABORT)
        else:
            for _ in range(event[1]):
                simulated_step(sched, live, num_blocks)
        check_invariants(sched, live)
    for _ in range(MAX_DRAIN_STEPS):  # liveness: without new arrivals every request finishes
        if not live:
            break
        simulated_step(sched, live, num_blocks)
        check_invariants(sched, live)
    assert not live and not sched.has_unfinished(), "requests left unfinished: the scheduler stalled"
    assert sched.block_manager.num_free_blocks == num_blocks
