"""Scheduler policies on simulated steps (no model): budget, chunking, preemption, shared-prefix deferral."""

import pytest

from runtime.engine.config import EngineConfig, EngineConfigError
from runtime.engine.scheduler import Scheduler
from runtime.engine.sequence import FinishReason, Sequence, SequenceStatus
from runtime.sampling import SamplingParams

BLOCK = 4


def make(num_blocks=64, budget=16, max_seqs=4, prefix_cache=True, batch_invariant=False, speculative_tokens=0):
    """Speculation off unless asked: these steps append repeated tokens, which would be drafted."""
    config = EngineConfig(block_size=BLOCK, num_blocks=num_blocks, max_num_seqs=max_seqs,
                          max_num_batched_tokens=budget, enable_prefix_cache=prefix_cache,
                          batch_invariant=batch_invariant, speculative_tokens=speculative_tokens)
    return Scheduler(config, num_blocks)


def add(sched, rid, prompt, max_tokens=4):
    s = Sequence(rid, list(prompt), SamplingParams(temperature=0.0, max_tokens=max_tokens))
    sched.add(s)
    return s


def step(sched):
    """One simulated step; returns {request_id: tokens computed}."""
    scheduled = sched.schedule()
    counts = {s.request_id: s.num_scheduled_tokens for s in scheduled}
    for s in scheduled:
        s.drop_drafts()  # none taken: only what the step scheduled is counted here
    for s in sched.after_step(scheduled):
        s.append_token(1)
        if s.num_completion_tokens >= s.params.max_tokens:
            sched.finish(s, FinishReason.LENGTH)
    return counts


def test_a_decode_whose_logits_are_penalized_gets_drafts_too():
    # verify adjusts each draft's row as of the drafts before it (tests/runtime/test_speculative.py)
    sched = make(budget=3, speculative_tokens=3)
    looping = Sequence("looping", [1, 2, 3, 4, 9, 1, 2], SamplingParams(temperature=0.0, max_tokens=12,
                                                                       frequency_penalty=0.5))
    sched.add(looping)
    [step(sched) for _ in range(3)]
    looping.token_ids[-1] = 3  # "1 2 3" was followed by "4 9 1": drafts, two of them in a budget of 3
    assert [s.num_scheduled_tokens for s in sched.schedule()] == [3] and looping.draft_token_ids == [4, 9]


def test_long_prompt_is_chunked_and_decodes_join_under_the_budget():
    sched = make(budget=16)
    short = add(sched, "short", range(3), max_tokens=10)
    long = add(sched, "long", range(100, 140))
    assert step(sched) == {"short": 3, "long": 13}
    assert step(sched) == {"short": 1, "long": 15}  # the decode and the next chunk share one step
    assert step(sched) == {"short": 1, "long": 12}
    assert long.num_computed_tokens == 40 and len(long) == 41 and short.num_completion_tokens == 3


@pytest.mark.parametrize(("max_tokens", "drafts"), [(12, [4, 9]), (3, [4]), (2, [])])
def test_a_decode_checks_drafts_within_the_budget_and_its_max_tokens(max_tokens, drafts):
    sched = make(budget=3, speculative_tokens=3)
    looping = add(sched, "looping", [1, 2, 3, 4, 9, 1, 2], max_tokens=max_tokens)
    assert [step(sched) for _ in range(3)] == [{"looping": 3}, {"looping": 3}, {"looping": 1}]  # no drafts in a prompt
    looping.token_ids[-1] = 3  # as if it sampled 3: "1 2 3" was followed by "4 9 1"
    scheduled = sched.schedule()
    # the budget of 3 holds the token and two drafts; max_tokens leaves room for fewer
    assert [(s.request_id, s.num_scheduled_tokens) for s in scheduled] == [("looping", 1 + len(drafts))]
    assert looping.drop_drafts() == drafts and looping.num_draft_tokens == 0
    sched.after_step(scheduled)
    assert looping.num_computed_tokens == len(looping) == 8  # the drafts' positions are not counted as computed


def test_batch_invariant_chunks_end_at_fixed_positions_of_the_prompt_whatever_runs_beside_it():
    def chunks_of_long(beside: int, batch_invariant: bool) -> list[int]:
        sched = make(budget=16, batch_invariant=batch_invariant)
        for n in range(beside):
            add(sched, f"short{n}", range(10 * n, 10 * n + 5), max_tokens=10)
        add(sched, "long", range(100, 140))
        return [c["long"] for c in (step(sched) for _ in range(8)) if c.get("long", 0) > 1]

    # the chunk is what the budget holds beside a decode of each other sequence, 16 - (4 - 1) = 13, in whole blocks
    assert chunks_of_long(0, True) == chunks_of_long(1, True) == chunks_of_long(3, True) == [12, 12, 12, 4]
    assert chunks_of_long(0, False) == [16, 16, 8] and chunks_of_long(1, False) == [11, 15, 14]


@pytest.mark.parametrize("batch_invariant", [False, True])
def test_batch_invariant_mode_uses_a_prefix_cache_hit_in_whole_chunks_only(batch_invariant):
    # whole chunks of 12 tokens: the rest of the prompt is computed in the chunks it would be without the hit
    sched = make(budget=16, batch_invariant=batch_invariant)
    first = add(sched, "first", range(100, 140), max_tokens=1)
    while sched.has_unfinished():
        step(sched)
    second = add(sched, "second", [*first.token_ids[:30], 7, 8, 9, 10, 11, 12])
    computed = step(sched)["second"]
    hit = 24 if batch_invariant else 28  # 7 cached blocks of the 30 shared tokens
    assert second.num_cached_prompt_tokens == hit and computed == (12 if batch_invariant else 8)


def test_batch_invariant_mode_refuses_a_budget_that_cannot_hold_a_chunk_beside_every_decode():
    with pytest.raises(EngineConfigError, match="batch_invariant needs max_num_batched_tokens"):
        EngineConfig(batch_invariant=True, max_num_batched_tokens=64, max_num_seqs=64)
    with pytest.raises(EngineConfigError, match="invariant_tile must be > 0"):
        EngineConfig(batch_invariant=True, invariant_tile=0)


def test_new_requests_join_between_decode_steps():
    sched = make()
    add(sched, "a", range(5), max_tokens=10)
    step(sched)
    add(sched, "b", range(50, 53), max_tokens=10)
    assert step(sched) == {"a": 1, "b": 3}


def test_preemption_by_recompute_when_blocks_run_out():
    sched = make(num_blocks=6, budget=32)
    first = add(sched, "first", range(12), max_tokens=4)
    second = add(sched, "second", range(20, 32), max_tokens=4)
    step(sched)  # both prompts fill all 6 blocks
    step(sched)  # both need a new block: the later one is preempted
    assert second.status is SequenceStatus.WAITING and second.block_table == [] and sched.num_preemptions == 1
    while first.status is not SequenceStatus.FINISHED:
        step(sched)
    while second.status is not SequenceStatus.FINISHED:
        step(sched)
    assert second.num_completion_tokens == 4  # recomputed, then finished normally
    assert sched.block_manager.num_free_blocks == 6


def test_shared_prefix_is_computed_once_when_requests_arrive_together():
    sched = make(budget=64, max_seqs=8)
    prefix = list(range(100, 132))  # 8 full blocks
    seqs = [add(sched, f"r{i}", prefix + [i, i + 1]) for i in range(4)]
    first_step = step(sched)
    assert first_step == {"r0": 34}  # the others wait for r0's prefix blocks instead of computing them again
    second_step = step(sched)
    assert second_step == {"r0": 1, "r1": 2, "r2": 2, "r3": 2}
    assert all(s.num_cached_prompt_tokens == 32 for s in seqs[1:])
    stats = sched.block_manager.stats
    assert stats.prompt_tokens_computed == 34 + 3 * 2 and stats.prompt_tokens_reused == 3 * 32


def test_a_prefix_a_scoring_request_computes_is_waited_for_and_a_scoring_request_waits_for_none():
    """A request asking for its prompt's log-probabilities (a server's echo or prompt_logprobs, for its first
    choice) computes its prompt whole; its blocks were unknown until its first step ended, so requests of the same
    prompt arriving with it computed it again. It itself reuses nothing, so it waits for nobody's blocks."""
    sched = make(budget=64, max_seqs=8)
    prefix = list(range(100, 132))  # 8 full blocks
    scoring = Sequence("scoring", prefix + [0], SamplingParams(temperature=0.0, max_tokens=4, prompt_logprobs=0))
    sched.add(scoring)
    others = [add(sched, f"r{i}", prefix + [i, i + 1]) for i in range(2)]
    assert step(sched) == {"scoring": 33}
    assert step(sched) == {"scoring": 1, "r0": 2, "r1": 2}
    assert all(s.num_cached_prompt_tokens == 32 for s in others)
    sched = make(budget=128, max_seqs=8)
    add(sched, "plain", prefix + [0])
    sched.add(Sequence("late", prefix + [1], SamplingParams(temperature=0.0, max_tokens=4, prompt_logprobs=0)))
    assert step(sched) == {"plain": 33, "late": 33}


def test_abort_frees_blocks_at_once():
    sched = make(num_blocks=8)
    s = add(sched, "a", range(10))
    step(sched)
    assert sched.block_manager.num_free_blocks == 8 - 3
    sched.finish(s, FinishReason.ABORT)
    assert sched.block_manager.num_free_blocks == 8 and not sched.has_unfinished()


@pytest.mark.parametrize(("decoding", "drafts_each"), [(1, 3), (2, 3), (3, 1), (4, 1), (5, 0)])
def test_drafts_shrink_as_decodes_fill_the_steps_rows(decoding, drafts_each):
    """Up to speculative_max_rows (8) decode rows a step: past that a CPU decode step computes more than it saves."""
    sched = make(budget=64, max_seqs=8, speculative_tokens=3)
    seqs = [add(sched, f"s{i}", [20 + i, 1, 2, 3, 4, 9, 1, 2], max_tokens=12) for i in range(decoding)]
    step(sched)  # the prompts, and one sampled token each
    for s in seqs:
        s.token_ids[-1] = 3  # as if each sampled 3: "1 2 3" was followed by "4 9 1"
    assert [s.num_scheduled_tokens for s in sched.schedule()] == [1 + drafts_each] * decoding


def add_with_priority(sched, rid, prompt, priority, max_tokens=4):
    s = Sequence(rid, list(prompt), SamplingParams(temperature=0.0, max_tokens=max_tokens, priority=priority))
    sched.add(s)
    return s


def test_a_higher_priority_request_is_admitted_first_and_preempts_a_lower_one():
    sched = make(num_blocks=4, budget=16, max_seqs=2)
    background = add_with_priority(sched, "background", range(8), priority=1, max_tokens=8)  # 2 blocks, then more
    assert step(sched) == {"background": 8}
    add_with_priority(sched, "later", range(100, 104), priority=1)
    urgent = add_with_priority(sched, "urgent", range(200, 204), priority=-1, max_tokens=8)
    assert [s.request_id for s in sched.waiting] == ["urgent", "later"]  # queued by priority, not arrival
    assert step(sched) == {"background": 1, "urgent": 4}  # the one slot left goes to the urgent request
    for _ in range(3):
        step(sched)
    # blocks ran out: the lower-priority sequence was preempted and waits ahead of its equal, behind nothing urgent
    assert background.status is SequenceStatus.WAITING and urgent.status is SequenceStatus.RUNNING
    assert [s.request_id for s in sched.waiting] == ["background", "later"] and sched.num_preemptions == 1


def test_a_waiting_request_takes_the_slot_of_a_lower_priority_one_never_of_an_equal():
    sched = make(budget=16, max_seqs=1)
    background = add_with_priority(sched, "background", range(8), priority=1, max_tokens=50)
    assert step(sched) == {"background": 8}
    equal = add_with_priority(sched, "equal", range(100, 104), priority=1)
    assert step(sched) == {"background": 1}  # the only slot is taken, and an equal waits its turn
    urgent = add_with_priority(sched, "urgent", range(200, 204), priority=-1)
    assert step(sched) == {"urgent": 4}  # admitted before background took its share of the step
    assert background.status is SequenceStatus.WAITING and [s.request_id for s in sched.waiting] == [
        "background", "equal"]  # first again among its priority
    while urgent.status is not SequenceStatus.FINISHED:
        assert set(step(sched)) == {"urgent"}
    # its prompt's two blocks come back from the prefix cache: the two tokens it had generated are recomputed
    assert step(sched) == {"background": 2}
    assert equal.status is SequenceStatus.WAITING and sched.num_preemptions == 1


def test_a_waiting_request_frees_blocks_held_by_lower_priorities_only():
    sched = make(num_blocks=5, budget=16, max_seqs=4)
    low = add_with_priority(sched, "low", range(8), priority=2, max_tokens=50)  # 2 blocks, then 3
    mid = add_with_priority(sched, "mid", range(100, 104), priority=1, max_tokens=50)  # 1 block, then 2
    assert step(sched) == {"low": 8, "mid": 4}
    # low and mid grow into the last 2 free blocks this step; the urgent request needs 2 more
    add_with_priority(sched, "urgent", range(200, 208), priority=0)
    assert step(sched) == {"mid": 1, "urgent": 8}  # low's 3 blocks freed (and its token this step); mid keeps its own
    assert low.status is SequenceStatus.WAITING and mid.status is SequenceStatus.RUNNING
    assert sched.num_preemptions == 1


def test_a_waiting_request_that_waits_for_an_in_flight_prefix_preempts_nobody():
    sched = make(budget=32, max_seqs=2)
    background = add_with_priority(sched, "background", range(4), priority=1, max_tokens=50)
    assert step(sched) == {"background": 4}
    add_with_priority(sched, "shared", range(100, 124), priority=0)
    add_with_priority(sched, "sharer", [*range(100, 116), 7, 8, 9], priority=0)
    # shared computes the prefix this step; sharer waits for it, so a slot taken from background would be lost
    assert step(sched) == {"background": 1, "shared": 24}
    assert background.status is SequenceStatus.RUNNING and sched.num_preemptions == 0


def test_a_prefix_whose_computing_sequence_was_preempted_is_computed_by_the_next_request_needing_it():
    sched = make(budget=16, max_seqs=2)
    add_with_priority(sched, "decoding", range(200, 204), priority=1, max_tokens=50)
    computing = add_with_priority(sched, "computing", range(100, 124), priority=1)
    assert step(sched) == {"decoding": 4, "computing": 12}
    add_with_priority(sched, "urgent", range(300, 303), priority=0)
    sharer = add_with_priority(sched, "sharer", [*range(100, 124), 7, 8, 9], priority=0)
    # urgent takes computing's slot; computing then computes nothing, so sharer computes the prefix blocks itself
    # (not waiting a step for them) in the slot of decoding, the other lower-priority sequence
    assert step(sched) == {"urgent": 3, "sharer": 13}
    assert computing.status is SequenceStatus.WAITING and sharer.num_cached_prompt_tokens == 12


def test_no_sequence_is_preempted_when_that_cannot_make_room():
    sched = make(num_blocks=6, budget=32, max_seqs=4)
    add_with_priority(sched, "high", range(15), priority=0, max_tokens=50)  # 4 blocks
    low = add_with_priority(sched, "low", range(100, 103), priority=1, max_tokens=50)  # 1 block
    assert step(sched) == {"high": 15, "low": 3}
    add_with_priority(sched, "urgent", range(200, 212), priority=0)  # 3 blocks: 1 free and low's 1 are too few
    assert step(sched) == {"high": 1, "low": 1}
    assert low.status is SequenceStatus.RUNNING and sched.num_preemptions == 0


@pytest.mark.parametrize("max_seqs", [1, 4])
def test_an_urgent_request_is_admitted_at_the_next_step_of_a_long_prefill_that_takes_the_whole_budget(max_seqs):
    sched = make(budget=16, max_seqs=max_seqs)
    long = add_with_priority(sched, "long", range(100, 164), priority=1)
    assert step(sched) == {"long": 16}
    add_with_priority(sched, "equal", range(300, 303), priority=1)
    urgent = add_with_priority(sched, "urgent", range(200, 203), priority=0)
    if max_seqs == 1:  # no free slot: it takes long's, whose computed blocks wait in the prefix cache
        assert step(sched) == {"urgent": 3}
        assert long.status is SequenceStatus.WAITING and sched.num_preemptions == 1
        while not urgent.is_finished:
            assert set(step(sched)) == {"urgent"}
        assert step(sched) == {"long": 16} and long.num_computed_tokens == 32  # its first 16 tokens from the cache
    else:  # the budget left after it goes on with long's prefill; its equal waits for long as before
        assert step(sched) == {"urgent": 3, "long": 13}
        assert long.status is SequenceStatus.RUNNING and sched.num_preemptions == 0


def test_an_urgent_request_takes_the_budget_of_lower_priority_decodes_without_preempting_them():
    sched = make(budget=2, max_seqs=4)
    decodes = [add_with_priority(sched, name, [n], priority=1, max_tokens=50) for n, name in enumerate("ab")]
    assert step(sched) == {"a": 1, "b": 1}
    add_with_priority(sched, "urgent", range(200, 203), priority=0)
    assert step(sched) == {"urgent": 2}  # its prompt's first 2 tokens; the decodes wait a step, keeping their blocks
    assert step(sched) == {"urgent": 1, "a": 1}
    assert all(s.status is SequenceStatus.RUNNING for s in decodes) and sched.num_preemptions == 0


def test_an_urgent_request_does_not_wait_for_a_prefix_a_lower_priority_sequence_computes():
    sched = make(budget=16, max_seqs=4)
    shared = list(range(100, 140))
    low = add_with_priority(sched, "low", [*shared, 1], priority=2)
    assert step(sched) == {"low": 16}
    add_with_priority(sched, "mid", range(1000, 1200), priority=1)
    assert step(sched) == {"mid": 16}  # the budget goes to mid's prefill first: low computes no more of the prefix
    urgent = add_with_priority(sched, "urgent", [*shared, 2], priority=0)
    # waiting for low's next block would wait for mid's whole prefill: it computes the block itself
    assert step(sched) == {"urgent": 16} and urgent.num_cached_prompt_tokens == 16
    assert low.num_computed_tokens == 16
