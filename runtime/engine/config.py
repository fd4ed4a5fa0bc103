"""Engine configuration: KV-cache geometry and memory budget, batching limits."""

from dataclasses import dataclass

from runtime.layers.batch_invariant import TILE_ROWS

MIB = 1 << 20
SPECULATIVE_TOKENS = 3


class EngineConfigError(ValueError):
    """An engine setting out of range; the message names the field."""


@dataclass(frozen=True)
class EngineConfig:
    block_size: int = 16  # tokens per KV-cache block
    kv_cache_bytes: int = 512 * MIB  # memory budget of the whole KV cache (all layers, K and V)
    num_blocks: int | None = None  # overrides the budget when set (tests use tiny caches)
    max_num_seqs: int = 64  # sequences in one step
    max_num_batched_tokens: int = 512  # token budget of one step: long prompts are prefilled in chunks of this
    max_model_len: int = 8192  # prompt + completion tokens of one sequence
    enable_prefix_cache: bool = True
    # prompt-lookup drafts a decoding sequence checks per step (speculative.py); 0 = off. Not in batch-invariant mode
    speculative_tokens: int = SPECULATIVE_TOKENS
    # fewer drafts each when a step's decode rows (tokens and drafts) would pass this: a CPU decode step reads every
    # weight once for up to 8 rows (runtime/layers/linear.py), past that it computes more than it saves
    speculative_max_rows: int = 8
    # every linear on fixed row tiles (runtime/layers/batch_invariant.py): greedy outputs that do not depend on the
    # batch, for a slower prefill; the engine changes its model in place
    batch_invariant: bool = False
    # that mode's row tile: every linear call computes this many rows. Larger tiles prefill faster, smaller ones pad a
    # small decode batch less (scripts/bench_invariant.py)
    invariant_tile: int = TILE_ROWS
    # compiled structured-output specs one grammar compiler keeps (runtime/structured.py; None: GRAMMAR_CACHE_BYTES)
    grammar_cache_bytes: int | None = None

    @property
    def invariant_chunk(self) -> int:
        """Batch-invariant mode's prefill chunk: what the budget always holds beside one decode of every other
        sequence, so a chunk never waits for decodes to end, in whole blocks, so a prefix-cache hit can end where a
        chunk does."""
        beside_decodes = self.max_num_batched_tokens - (self.max_num_seqs - 1)
        return beside_decodes // self.block_size * self.block_size

    def __post_init__(self):
        for name in ("block_size", "kv_cache_bytes", "max_num_seqs", "max_num_batched_tokens", "max_model_len",
                     "invariant_tile", "speculative_max_rows"):
            if getattr(self, name) <= 0:
                raise EngineConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.batch_invariant and self.invariant_chunk < self.block_size:
            raise EngineConfigError(f"batch_invariant needs max_num_batched_tokens ({self.max_num_batched_tokens}) >= "
                                    f"max_num_seqs - 1 + block_size ({self.max_num_seqs - 1 + self.block_size})")
        if self.speculative_tokens < 0:
            raise EngineConfigError(f"speculative_tokens must be >= 0, got {self.speculative_tokens}")
        for name in ("num_blocks", "grammar_cache_bytes"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise EngineConfigError(f"{name} must be > 0, got {getattr(self, name)}")


def check_context_held(asked: int | None, held: int) -> None:
    """A context asked for explicitly (`serve --max-model-len`) is what clients are told and size prompts to, so an
    engine that cannot hold one sequence of it is refused: its KV cache is too small, or the model's
    max_position_embeddings is smaller; without one, the context is min(8192, both of those)."""
    if asked is not None and held < asked:
        raise EngineConfigError(f"max_model_len {asked} does not fit: the engine holds {held} tokens of one "
                                f"sequence (its KV cache, or the model's max_position_embeddings); give a smaller "
                                f"--max-model-len, or a larger --kv-cache-gib if the cache is what limits it")
