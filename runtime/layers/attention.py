"""Attention over flattened tokens, with or without the engine's paged KV cache.

Shapes: T = tokens in the step (all sequences concatenated), H = query heads, Hkv = key/value heads, D = head dim,
S = cache slots (blocks × block size), B = decoding sequences, L = longest context among them, C = one sequence's
context (cached prefix + new tokens).

Without an engine context this is plain causal attention over one sequence (used by parity tests and the simple
generate path). The engine (runtime/engine/) gives each layer its K/V cache and installs a per-step
`AttentionContext`: new K/V are written to their cache slots, then decoding sequences (one new token each, placed
first in the step) attend together over their contexts, and prefilling sequences (a prompt chunk, possibly after a
cached prefix) attend one by one.

Decoding reads FP32 or BF16 caches in place with the native kernel (kernels/paged_attention.py) where it builds;
otherwise it gathers the contexts into a batch padded to the longest and runs SDPA (or, in batch-invariant mode, one
sequence at a time over exactly its own context). The native kernel's results do not depend on the batch either.

In batch-invariant mode with the native kernel, prefill chunks attend through it too, each query as if it were
decoded at its position: a token's numbers are then the same whether it was decoded or prefilled, so blocks a
sequence wrote while decoding equal their recompute after a preemption, and a prefix-cache hit on them changes
nothing. (SDPA over a chunk with a causal mask sums in another order: up to ~1e-6 apart in FP32, more in BF16.)
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn

from kernels import paged_attention

NATIVE_DECODE = True  # read at every call, so scripts/bench_cpu_attention.py can compare the torch form in one run


@dataclass(frozen=True)
class PrefillSpan:
    """One prefilling sequence of the step: rows [start, end) of T, its whole context's cache slots."""

    start: int
    end: int
    context_slots: torch.Tensor  # [C] int64; the last end - start of them are this step's tokens

    @property
    def has_cached_prefix(self) -> bool:
        return self.context_slots.numel() > self.end - self.start

    @cached_property
    def causal_mask(self) -> torch.Tensor:
        """[N, C] bool: query i sits at position c - n + i and sees keys 0 ..= that position. Built once a step and
        shared by every layer (a 512 x 2048 one took 0.5 ms to build, 12 ms a chunk when each layer built its own)."""
        n, c = self.end - self.start, self.context_slots.numel()
        return torch.ones(n, c, dtype=torch.bool, device=self.context_slots.device).tril(diagonal=c - n)

    def as_decodes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The chunk's queries as decodes: query i sits at position c - n + i and reads that many slots + 1.
        Returns slot lists [N, C] (one shared row, stride 0) and lengths [N]."""
        n, c = self.end - self.start, self.context_slots.numel()
        return self.context_slots.expand(n, c), torch.arange(c - n + 1, c + 1, device=self.context_slots.device)


@dataclass(frozen=True)
class AttentionContext:
    slot_mapping: torch.Tensor  # [T] int64: cache slot of each new token's K/V
    num_decode: int  # rows [0, num_decode) of T attend as decodes: one token of a sequence each (or a draft)
    decode_slots: torch.Tensor | None  # [B, L] int64: context slots per decode row, padded with slot 0
    prefills: tuple[PrefillSpan, ...]
    decode_lengths: torch.Tensor | None = None  # [B] int64: each decode row's context length
    # batch-invariant mode: in torch's form each decoding sequence attends one by one over exactly its own keys
    # (padding to the batch's longest context changes BF16 results by up to 2e-3); with the native kernel,
    # prefill queries attend as decodes do
    batch_invariant: bool = False

    @cached_property
    def decode_mask(self) -> torch.Tensor:
        """[B, 1, 1, L] bool: True where a padded slot belongs to the context; built only for torch's padded decode
        forms (the native kernels read the lengths)."""
        width = self.decode_slots.shape[1]
        return (torch.arange(width, device=self.decode_slots.device)[None, :]
                < self.decode_lengths[:, None])[:, None, None, :]


_context: AttentionContext | None = None


def get_context() -> AttentionContext | None:
    return _context


@contextmanager
def attention_context(context: AttentionContext) -> Iterator[None]:
    """Install the step's context for the duration of one forward pass."""
    global _context
    previous, _context = _context, context
    try:
        yield
    finally:
        _context = previous


class Attention(nn.Module):
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float):
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads}")
        self.num_heads, self.num_kv_heads, self.head_dim, self.scale = num_heads, num_kv_heads, head_dim, scale
        self.gqa = num_heads != num_kv_heads
        # set by the engine's model runner: [S, Hkv, D] views into its KV cache
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q [T, H, D], k/v [T, Hkv, D] -> [T, H, D]
        context = get_context()
        if context is None or self.k_cache is None:
            return self._causal(q, k, v)
        self.k_cache.index_copy_(0, context.slot_mapping, k)  # [S, Hkv, D]
        self.v_cache.index_copy_(0, context.slot_mapping, v)
        if context.num_decode and context.num_decode == q.shape[0]:  # decodes only: no output to assemble
            return self._decode(q, context)
        out = torch.empty_like(q)
        if context.num_decode:
            out[: context.num_decode] = self._decode(q[: context.num_decode], context)
        as_decodes = context.batch_invariant and NATIVE_DECODE and paged_attention.takes(q, self.k_cache)
        for span in context.prefills:
            if as_decodes:
                out[span.start : span.end] = self._prefill_as_decodes(q[span.start : span.end], span)
            elif span.has_cached_prefix:
                out[span.start : span.end] = self._prefill_after_prefix(q[span.start : span.end], span)
            else:  # nothing cached before this chunk: its own fresh K/V are the whole context
                out[span.start : span.end] = self._causal(
                    q[span.start : span.end], k[span.start : span.end], v[span.start : span.end]
                )
        return out

    def _one_sequence(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **mask) -> torch.Tensor:
        # q [H, N, D], k/v [Hkv, C, D] -> [H, N, D]. A batch of one: on CPUs, 3-D inputs always take SDPA's unfused
        # math path, 4-D ones its flash kernel, 1.5-1.9x faster for a 512-token chunk (bench_cpu_attention.py)
        out = F.scaled_dot_product_attention(q[None], k[None], v[None], scale=self.scale, enable_gqa=self.gqa, **mask)
        return out[0]

    def _causal(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q [T, H, D], k/v [T, Hkv, D] -> [T, H, D]
        out = self._one_sequence(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True)  # [H, T, D]
        return out.transpose(0, 1)

    @staticmethod
    def _gather(cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        # cache [S, Hkv, D], slots [...] -> [..., Hkv, D]; index_select is ~100x faster than advanced indexing on CPU
        return cache.index_select(0, slots.reshape(-1)).view(*slots.shape, *cache.shape[1:])

    def _decode(self, q: torch.Tensor, context: AttentionContext) -> torch.Tensor:
        # q [B, H, D] -> [B, H, D]
        if NATIVE_DECODE and paged_attention.takes(q, self.k_cache):
            return paged_attention.paged_decode_attention(q, self.k_cache, self.v_cache, context.decode_slots,
                                                          context.decode_lengths, self.scale)
        if context.batch_invariant:
            return torch.cat([self._decode_one(q[i], context.decode_slots[i, :n])
                              for i, n in enumerate(context.decode_lengths.tolist())])
        k = self._gather(self.k_cache, context.decode_slots).transpose(1, 2)  # [B, Hkv, L, D]
        v = self._gather(self.v_cache, context.decode_slots).transpose(1, 2)
        out = F.scaled_dot_product_attention(
            q.unsqueeze(2), k, v, attn_mask=context.decode_mask, scale=self.scale, enable_gqa=self.gqa
        )  # [B, H, 1, D]
        return out.squeeze(2)

    def _decode_one(self, q: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        # q [H, D], slots [C] -> [1, H, D]
        k = self._gather(self.k_cache, slots).transpose(0, 1)  # [Hkv, C, D]
        v = self._gather(self.v_cache, slots).transpose(0, 1)
        return self._one_sequence(q[:, None], k, v).transpose(0, 1)  # [H, 1, D] -> [1, H, D]

    def _prefill_after_prefix(self, q: torch.Tensor, span: PrefillSpan) -> torch.Tensor:
        # q [N, H, D] are the last N positions of a context of C tokens -> [N, H, D]
        k = self._gather(self.k_cache, span.context_slots).transpose(0, 1)  # [Hkv, C, D]
        v = self._gather(self.v_cache, span.context_slots).transpose(0, 1)
        return self._one_sequence(q.transpose(0, 1), k, v, attn_mask=span.causal_mask).transpose(0, 1)  # [N, H, D]

    def _prefill_as_decodes(self, q: torch.Tensor, span: PrefillSpan) -> torch.Tensor:
        # q [N, H, D] -> [N, H, D], each query as a decode at its position
        slots, lengths = span.as_decodes()  # [N, C], [N]
        return paged_attention.paged_decode_attention(q, self.k_cache, self.v_cache, slots, lengths, self.scale)
