"""Continuous batching: which sequences compute how many tokens in the next step.

Every step has a token budget. Running sequences come first (a decode costs one token, an unfinished chunked
prefill takes what is left of the budget), then waiting sequences are admitted while budget, sequence slots and
blocks last; a waiting request of a higher priority than a running sequence is admitted before that sequence takes
its share. When blocks run out, the most recently admitted running sequence is preempted: its blocks are freed
and it is recomputed later (its prefix is likely still in the prefix cache). A request's `priority` (lower first)
orders all three: running sequences take the budget in priority order, the waiting queue is kept in priority order
(arrival order within one), and the victim of a preemption is the latest admitted of the lowest priority. A waiting
request that finds no free slot or too few blocks preempts running sequences of a lower priority (never of its own),
so an urgent request does not wait for the background's long decodes to end; only when that makes room for it, and
not while it waits for a prefix block being computed (the room would go to others). A waiting request whose next
prefix block is being computed right now by another request of its priority or a higher one waits one step, so a
shared prompt is prefilled once. With `speculative_tokens`, a decoding sequence may compute its last token and a few
drafts copied from its own earlier tokens (speculative.py) in one step; the engine takes the drafts off again after
the step.

In batch-invariant mode a prompt is chunked at fixed positions of its own (multiples of `invariant_chunk`), not where
the step's leftover budget happens to end: chunk boundaries change the order of a prompt's floating-point sums, so a
prompt prefilled beside other requests would otherwise compute other numbers than alone. A chunk that does not fit
what is left of the budget waits for the next step. A prefix-cache hit is used in whole chunks only.
"""

import math
from collections import Counter, deque

from runtime.engine.block_manager import BlockManager
from runtime.engine.config import EngineConfig
from runtime.engine.sequence import FinishReason, Sequence, SequenceStatus
from runtime.engine.speculative import propose


class Scheduler:
    def __init__(self, config: EngineConfig, num_blocks: int, max_positions: int | None = None):
        """`max_positions`: the model's max_position_embeddings, past which it was never meant to read."""
        self.config = config
        held = num_blocks * config.block_size
        self.max_model_len = min(config.max_model_len, held, max_positions or config.max_model_len)
        self.block_manager = BlockManager(num_blocks, config.block_size, config.enable_prefix_cache)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        """Queue seq behind every waiting sequence of its priority or a higher one."""
        self._queue(seq, ahead_of_equals=False)

    def _queue(self, seq: Sequence, *, ahead_of_equals: bool) -> None:
        """Insert seq in priority order: behind the waiting sequences of its own priority (a new request), or ahead
        of them (a preempted one)."""
        priority = seq.params.priority

        def yields_to_seq(waiting: Sequence) -> bool:
            return waiting.params.priority > priority or (ahead_of_equals and waiting.params.priority == priority)

        at = next((i for i, waiting in enumerate(self.waiting) if yields_to_seq(waiting)), len(self.waiting))
        self.waiting.insert(at, seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> list[Sequence]:
        """Set num_scheduled_tokens of the sequences of the next step and return them (decodes first)."""
        budget = self.config.max_num_batched_tokens
        scheduled: list[Sequence] = []
        drafts = self._drafts_per_decode()
        for seq in sorted(self.running, key=_priority):  # stable: admission order within a priority
            if self.waiting and _priority(self.waiting[0]) < _priority(seq):
                # waiting requests that outrank seq come before it: else a long prefill of a lower priority, taking
                # every step's whole budget, would keep them waiting until it ends
                budget = self._admit_waiting(scheduled, budget, outranking=_priority(seq))
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:  # preempted by an earlier sequence of this loop
                continue
            self._add_drafts(seq, min(drafts, budget - 1))
            num_new = self._chunk(seq.num_computed_tokens, seq.num_uncomputed_tokens, budget)
            if num_new == 0:  # its fixed-size chunk waits for a step with room
                continue
            if not self._make_room(seq, num_new):
                continue
            self.block_manager.grow(seq, num_new)
            seq.num_scheduled_tokens = num_new
            budget -= num_new
            scheduled.append(seq)
        budget = self._admit_waiting(scheduled, budget)
        # decodes first (with their drafts): the model runner batches them
        scheduled.sort(key=lambda s: s.num_scheduled_tokens > 1 and not s.num_draft_tokens)
        return scheduled

    def _chunk(self, start: int, uncomputed: int, budget: int) -> int:
        """Tokens to compute this step from position `start`: as many as the budget allows, or (batch-invariant) up
        to the next multiple of `invariant_chunk`, or none when that does not fit the budget."""
        if not self.config.batch_invariant:
            return min(uncomputed, budget)
        size = self.config.invariant_chunk
        num_new = min(uncomputed, size - start % size)
        return num_new if num_new <= budget else 0

    def _chunk_aligned(self, reused: list[int]) -> list[int]:
        """The prefix-cache hit `reused`, cut (batch-invariant) to whole chunks: the rest of the prompt is then
        computed in the chunks it would be without the hit. A hit ending mid-chunk computed that chunk's tail over
        fewer rows and changed the numbers (the 0.5B model in BF16: first logprob -0.501 against -0.485)."""
        if not self.config.batch_invariant:
            return reused
        per_chunk = self.config.invariant_chunk // self.config.block_size
        return reused[: len(reused) // per_chunk * per_chunk]

    def _drafts_per_decode(self) -> int:
        """Drafts each decoding sequence may check this step: `speculative_tokens`, fewer when the step's decode rows
        (tokens and drafts) would pass `speculative_max_rows`, none in batch-invariant mode (that mode promises numbers
        that do not depend on the batch; drafts there are not shown to keep that promise)."""
        if not self.config.speculative_tokens or self.config.batch_invariant:
            return 0
        decoding = sum(1 for s in self.running if s.is_decoding)
        if not decoding:
            return 0
        return max(0, min(self.config.speculative_tokens, self.config.speculative_max_rows // decoding - 1))

    def _add_drafts(self, seq: Sequence, k: int) -> None:
        """Up to k speculative drafts after a decoding sequence's last token (speculative.propose), as many as its
        max_tokens, the context and the free blocks leave room for. Penalties and a logit bias are applied to each
        draft's row as of the drafts before it (speculative.verify), a structured-output grammar's likewise
        (structured.draft_rows_allowed)."""
        if k <= 0 or not seq.is_decoding:
            return
        k = min(k, seq.params.max_tokens - seq.num_completion_tokens - 1, self.max_model_len - len(seq) - 1)
        drafts = propose(seq.token_ids, k)
        if drafts and self.block_manager.can_grow(seq, 1 + len(drafts)):
            seq.add_drafts(drafts)

    def _make_room(self, seq: Sequence, num_new: int) -> bool:
        """Preempt the latest admitted sequences until seq can grow; False if seq itself had to go."""
        while not self.block_manager.can_grow(seq, num_new):
            victim = max(reversed(self.running), key=_priority)  # the latest admitted of the lowest priority
            self._preempt(victim)
            if victim is seq:
                return False
        return True

    def _admit_waiting(self, scheduled: list[Sequence], budget: int, outranking: float = math.inf) -> int:
        """Admit waiting sequences (only those of a priority above `outranking`, when given) while the budget, the
        slots and the blocks last; return the budget left."""
        deferred: list[Sequence] = []
        while self.waiting and budget > 0 and _priority(self.waiting[0]) < outranking:
            seq = self.waiting[0]
            reused = self._chunk_aligned(self.block_manager.reusable_blocks(seq))
            # before any preemption for it: a slot or blocks freed for a request that then waits would go to others
            if self._being_computed(self.block_manager.next_uncached_hash(seq, len(reused)), _priority(seq)):
                deferred.append(self.waiting.popleft())  # another request is computing this prefix block now
                continue
            start = len(reused) * self.config.block_size
            num_new = self._chunk(start, len(seq) - start, budget)
            if num_new == 0:
                break
            if len(self.running) >= self.config.max_num_seqs or not self._fits(seq, reused, num_new):
                refund = self._yield_to(seq, reused, budget, scheduled)
                if refund is None:
                    break
                budget += refund
                continue
            self.waiting.popleft()
            self.block_manager.admit(seq, reused)
            self.block_manager.grow(seq, num_new)
            seq.status = SequenceStatus.RUNNING
            seq.num_scheduled_tokens = num_new
            budget -= num_new
            self.running.append(seq)
            scheduled.append(seq)
        self.waiting.extendleft(reversed(deferred))
        return budget

    def _fits(self, seq: Sequence, reused: list[int], num_new: int, freed: frozenset[int] = frozenset()) -> bool:
        """Whether the waiting seq's first `num_new` tokens after its `reused` prefix blocks have blocks, with the
        blocks `freed` (no longer held) added to the free ones."""
        blocks = self.block_manager
        # reused blocks that sit in the free list (or will): taking them shrinks it
        reserved = sum(1 for b in reused if blocks.blocks[b].ref_count == 0 or b in freed)
        needed = blocks.blocks_needed(len(reused) * self.config.block_size + num_new) - len(reused)
        return needed + reserved <= blocks.num_free_blocks + len(freed)

    def _yield_to(self, seq: Sequence, reused: list[int], budget: int, scheduled: list[Sequence]) -> int | None:
        """Preempt the latest admitted running sequence of the lowest priority if it ranks below the waiting `seq`,
        and return the tokens of this step's budget it gives back (it may have been scheduled already). None, and
        no preemption, when every running sequence ranks with or above seq, or when preempting all those below it
        would still leave too few blocks for seq's first chunk: their computed work would be lost for nothing."""
        below = [s for s in self.running if _priority(s) > _priority(seq)]
        if not below:
            return None
        held = Counter(b for s in below for b in s.block_table)
        freed = frozenset(b for b, refs in held.items() if self.block_manager.blocks[b].ref_count == refs)
        start = len(reused) * self.config.block_size
        # the largest first chunk seq could get: the budget with every scheduled token of those below given back
        most = self._chunk(start, len(seq) - start, budget + sum(s.num_scheduled_tokens for s in below))
        if not self._fits(seq, reused, most, freed):
            return None
        victim = max(reversed(below), key=_priority)
        refund = victim.num_scheduled_tokens
        if victim in scheduled:
            scheduled.remove(victim)
        self._preempt(victim)
        return refund

    def _being_computed(self, block_hash: int | None, priority: int) -> bool:
        """Whether a running sequence of `priority` or a higher one computes the prefix block `block_hash` (in this
        step or the coming ones). Those take their share of a step's budget before a waiting request of `priority`;
        one of a lower priority may get none for as long as others above it take it all, and waiting for it would
        wait for them."""
        return block_hash is not None and any(
            block_hash in self._pending_hashes(s) for s in self.running if _priority(s) <= priority)

    def _pending_hashes(self, seq: Sequence) -> list[int]:
        """Hashes of seq's full prompt blocks not yet in the cache: blocks it will compute in coming steps."""
        done = seq.num_computed_tokens // self.config.block_size
        return seq.block_hashes[done : seq.num_prompt_tokens // self.config.block_size]

    def _preempt(self, seq: Sequence) -> None:
        seq.drop_drafts()
        self.block_manager.free_sequence(seq)
        self.running.remove(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_scheduled_tokens = 0
        self._queue(seq, ahead_of_equals=True)  # first again among its priority
        self.num_preemptions += 1

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """End a sequence (finished or aborted) and free its blocks at once."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
            self.block_manager.free_sequence(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        seq.num_scheduled_tokens = 0

    def after_step(self, scheduled: list[Sequence]) -> list[Sequence]:
        """Account the computed tokens; return the sequences that reached their end and need a sampled token."""
        ready = []
        for seq in scheduled:
            start = seq.num_computed_tokens
            # a sequence's checked drafts are already off token_ids: only its tokens count as computed (the engine
            # counts the drafts it takes as it appends them)
            seq.num_computed_tokens = min(seq.num_computed_tokens + seq.num_scheduled_tokens, len(seq))
            prompt_computed = max(0, min(seq.num_computed_tokens, seq.num_prompt_tokens) - start)
            self.block_manager.commit(seq, prompt_computed)
            seq.num_scheduled_tokens = 0
            if seq.num_computed_tokens == len(seq):
                ready.append(seq)
        return ready


def _priority(seq: Sequence) -> int:
    return seq.params.priority
