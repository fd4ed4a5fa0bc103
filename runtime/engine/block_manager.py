"""Paged KV-cache bookkeeping: fixed-size blocks, reference counts and the prefix cache.

A full block is identified by a hash chained over the tokens, h_i = hash((h_{i-1}, tokens of block i)), so equal
hashes mean equal prefixes. Freed blocks that carry a hash stay in the cache (reusable by a later request) until a
new allocation evicts them, least recently freed first.
"""

from collections import OrderedDict
from dataclasses import dataclass

from runtime.engine.sequence import Sequence

NO_HASH = -1


class BlockAccountingError(RuntimeError):
    """A block freed twice or a reference count gone negative: a bug in the engine, never a user error."""


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    hash: int = NO_HASH
    token_ids: tuple[int, ...] = ()


@dataclass
class PrefixCacheStats:
    prompt_tokens_computed: int = 0
    prompt_tokens_reused: int = 0


def chain_hash(prev_hash: int, token_ids: tuple[int, ...]) -> int:
    return hash((prev_hash, token_ids))


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_cache: bool = True):
        self.block_size = block_size
        self.enable_prefix_cache = enable_prefix_cache
        self.blocks = [Block(i) for i in range(num_blocks)]
        # free blocks, eviction order first; hashed ones are still reusable by the prefix cache
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.hash_to_block: dict[int, int] = {}
        self.stats = PrefixCacheStats()

    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # --- prefix cache -----------------------------------------------------------------------------------------
    def _update_hashes(self, seq: Sequence) -> None:
        bs = self.block_size
        for i in range(len(seq.block_hashes), len(seq) // bs):
            prev = seq.block_hashes[-1] if seq.block_hashes else NO_HASH
            seq.block_hashes.append(chain_hash(prev, tuple(seq.token_ids[i * bs : (i + 1) * bs])))

    def _cached_block(self, seq: Sequence, index: int) -> int | None:
        block_id = self.hash_to_block.get(seq.block_hashes[index])
        if block_id is None:
            return None
        bs = self.block_size
        # equal hashes with different tokens would be a collision: check the tokens themselves
        tokens = tuple(seq.token_ids[index * bs : (index + 1) * bs])
        return block_id if self.blocks[block_id].token_ids == tokens else None

    def reusable_blocks(self, seq: Sequence) -> list[int]:
        """Cached blocks of seq's prefix; at least one token is always left to compute (it yields the logits). None
        for a request asking for its prompt's log-probabilities: a reused position computes no logits. Its hashes are
        known all the same, so that requests of the same prompt wait for the blocks it computes (the scheduler)."""
        if not self.enable_prefix_cache:
            return []
        self._update_hashes(seq)
        if seq.params.prompt_logprobs is not None:
            return []
        limit = (len(seq) - 1) // self.block_size
        found = []
        for i in range(limit):
            block_id = self._cached_block(seq, i)
            if block_id is None:
                break
            found.append(block_id)
        return found

    def next_uncached_hash(self, seq: Sequence, num_reused_blocks: int) -> int | None:
        """Hash of the first full block of seq's prompt that the cache does not hold (None if there is none, and for
        a request that reuses no blocks: it has nothing to wait for)."""
        if (not self.enable_prefix_cache or seq.params.prompt_logprobs is not None
                or num_reused_blocks >= len(seq.block_hashes)):
            return None
        return seq.block_hashes[num_reused_blocks]

    # --- allocation -------------------------------------------------------------------------------------------
    def admit(self, seq: Sequence, reused: list[int]) -> None:
        """Give a waiting sequence its reused prefix blocks; its K/V for those tokens is already computed."""
        if seq.block_table:
            raise BlockAccountingError(f"sequence {seq.request_id!r} admitted while holding blocks")
        for block_id in reused:
            self._take(block_id)
        seq.block_table = list(reused)
        seq.num_computed_tokens = len(reused) * self.block_size
        reused_prompt = min(seq.num_computed_tokens, seq.num_prompt_tokens)
        self.stats.prompt_tokens_reused += reused_prompt
        if not seq.admitted:
            seq.num_cached_prompt_tokens = reused_prompt
            seq.admitted = True

    def can_grow(self, seq: Sequence, num_new_tokens: int, reserved: int = 0) -> bool:
        needed = self.blocks_needed(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        return needed + reserved <= self.num_free_blocks

    def grow(self, seq: Sequence, num_new_tokens: int) -> None:
        """Allocate the blocks that the next `num_new_tokens` of seq will be written to."""
        needed = self.blocks_needed(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        if needed > self.num_free_blocks:
            raise BlockAccountingError(f"grow({seq.request_id!r}) without free blocks: check can_grow first")
        for _ in range(needed):
            block_id = next(iter(self.free))
            block = self.blocks[block_id]
            if block.hash != NO_HASH and self.hash_to_block.get(block.hash) == block_id:
                del self.hash_to_block[block.hash]  # evict the least recently freed cached block
            block.hash, block.token_ids = NO_HASH, ()
            self._take(block_id)
            seq.block_table.append(block_id)

    def commit(self, seq: Sequence, num_prompt_tokens_computed: int) -> None:
        """After a step: register the blocks that became full and computed in the prefix cache."""
        self.stats.prompt_tokens_computed += num_prompt_tokens_computed
        if not self.enable_prefix_cache:
            return
        self._update_hashes(seq)
        bs = self.block_size
        for i in range(seq.num_computed_tokens // bs):
            block = self.blocks[seq.block_table[i]]
            if block.hash != NO_HASH:
                continue
            block.hash, block.token_ids = seq.block_hashes[i], tuple(seq.token_ids[i * bs : (i + 1) * bs])
            self.hash_to_block.setdefault(block.hash, block.block_id)

    def free_sequence(self, seq: Sequence) -> None:
        """Release seq's blocks at once (finish, abort or preemption)."""
        for block_id in reversed(seq.block_table):  # the tail first: a prefix outlives its continuations
            block = self.blocks[block_id]
            if block.ref_count <= 0:
                raise BlockAccountingError(f"block {block_id} freed with ref_count {block.ref_count}")
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free[block_id] = None
                if block.hash == NO_HASH:
                    self.free.move_to_end(block_id, last=False)  # holds nothing reusable: hand it out first
        seq.block_table = []
        seq.num_computed_tokens = 0

    def _take(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            if block_id not in self.free:
                raise BlockAccountingError(f"block {block_id} has no reference yet is not free")
            del self.free[block_id]
        block.ref_count += 1
