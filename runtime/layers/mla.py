"""Multi-head Latent Attention (DeepSeek-V2/V3, Kimi K2), step by step with the checkpoint's module names.

Shapes: T = tokens of the step, S = cached tokens attended to, D = hidden, H = heads, Q = q_lora_rank,
C = kv_lora_rank, N = qk_nope_head_dim, R = qk_rope_head_dim, V = v_head_dim, L = C + R (latent cache width).

  query:  q_a_proj -> q_a_layernorm -> q_b_proj  (or q_proj when Q is None)      [T, H, N + R]
  latent: kv_a_proj_with_mqa -> (c [T, C] -> kv_a_layernorm, k_rope [T, R])      one key/value latent per token
  naive:    kv_b_proj expands c into per-head keys [T, H, N] and values [T, H, V]; plain attention
  absorbed: kv_b_proj's key part is folded into the query (q_nope · W_UK -> [T, H, C]) and its value part into the
            output, so attention runs against the latent itself: a cache of L = C + R values per token and layer
            (576 for Kimi K2) instead of H * (N + R + V).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kernels import paged_attention
from runtime.layers import attention
from runtime.layers.attention import Attention, AttentionContext, PrefillSpan, get_context
from runtime.layers.batch_invariant import in_fixed_tiles
from runtime.layers.linear import Linear
from runtime.layers.rmsnorm import RMSNorm
from runtime.layers.rotary_yarn import YarnRotaryEmbedding

# DeepSeek's reference code builds the two latent norms with this eps whatever the config says.
LATENT_NORM_EPS = 1e-6


@dataclass(frozen=True)
class MLADims:
    hidden_size: int
    num_heads: int
    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    attention_bias: bool = False

    def __post_init__(self):
        sizes = (self.hidden_size, self.num_heads, self.kv_lora_rank, self.qk_nope_head_dim, self.qk_rope_head_dim,
                 self.v_head_dim)
        if min(sizes) <= 0 or (self.q_lora_rank is not None and self.q_lora_rank <= 0):
            raise ValueError(f"MLA sizes must be positive: {self}")

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def latent_dim(self) -> int:
        """Values cached per token and layer by the absorbed form: compressed kv + rope key."""
        return self.kv_lora_rank + self.qk_rope_head_dim


def latent_attention(q: torch.Tensor, latents: torch.Tensor, value_dim: int, scale: float) -> torch.Tensor:
    """Causal attention of absorbed queries q [T, H, L] over latent rows [S, L] (S >= T; the queries are the last T
    positions, so a decode step passes the whole cached sequence). Values are the first `value_dim` (C) columns.
    Returns [T, H, C]."""
    t, s = q.shape[0], latents.shape[0]
    scores = torch.einsum("thl,sl->hts", q, latents) * scale  # [H, T, S]
    query_pos = torch.arange(s - t, s, device=q.device)[:, None]  # [T, 1]
    future = torch.arange(s, device=q.device)[None, :] > query_pos  # [T, S]
    scores = scores.masked_fill(future, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)  # [H, T, S]
    return torch.einsum("hts,sc->thc", probs, latents[:, :value_dim])  # [T, H, C]


class LatentAttention(nn.Module):
    """The absorbed form's attention core, over the latent rows [*, L] of each token.

    Without an engine context it attends causally over the step's own latents (one sequence). The engine gives it
    `latent_cache` [S, L] (one row per cache slot) and installs the step's `AttentionContext`: the new latents are
    written to their slots, decoding sequences (first in the step) attend together over their rows, and each prefill
    chunk attends over its whole context (cached prefix + itself). Decoding reads the cache in place through the
    native kernel where it builds (kernels/paged_attention.py, FP32 or BF16), else gathers the rows into a padded
    batch (batch-invariant too: a sequence's output padded to a 1500-token neighbour's context equalled its output
    alone, 16 heads, L = 576, FP32 and BF16 on an AVX2 CPU). In batch-invariant mode with the native kernel, prefill
    chunks attend through it as well, each query as a decode at its position, as Attention's do.
    """

    def __init__(self, num_heads: int, latent_dim: int, value_dim: int, scale: float):
        super().__init__()
        self.num_heads, self.latent_dim, self.value_dim, self.scale = num_heads, latent_dim, value_dim, scale
        self.latent_cache: torch.Tensor | None = None  # [S, L], set by the engine's model runner

    def forward(self, q: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        # q [T, H, L], latent [T, L] -> [T, H, C]
        context = get_context()
        if context is None or self.latent_cache is None:
            return latent_attention(q, latent, self.value_dim, self.scale)
        self.latent_cache.index_copy_(0, context.slot_mapping, latent)
        out = q.new_empty(q.shape[0], self.num_heads, self.value_dim)  # [T, H, C]
        if context.num_decode:
            out[: context.num_decode] = self._decode(q[: context.num_decode], context)
        as_decodes = context.batch_invariant and self._native(q)
        for span in context.prefills:
            if as_decodes:
                out[span.start : span.end] = self._prefill_as_decodes(q[span.start : span.end], span)
                continue
            rows = self.latent_cache.index_select(0, span.context_slots)  # [C_ctx, L]
            out[span.start : span.end] = latent_attention(q[span.start : span.end], rows, self.value_dim, self.scale)
        return out

    def _native(self, q: torch.Tensor) -> bool:
        return (attention.NATIVE_DECODE and self.value_dim % paged_attention.LANES == 0
                and paged_attention.takes(q, self.latent_cache))

    def _prefill_as_decodes(self, q: torch.Tensor, span: PrefillSpan) -> torch.Tensor:
        # q [N, H, L] -> [N, H, C], each query as a decode at its position
        slots, lengths = span.as_decodes()  # [N, C], [N]
        return paged_attention.paged_latent_decode_attention(q, self.latent_cache, slots, lengths, self.value_dim,
                                                             self.scale)

    def _decode(self, q: torch.Tensor, context: AttentionContext) -> torch.Tensor:
        # q [B, H, L] (one new token per sequence) -> [B, H, C]
        if self._native(q):
            return paged_attention.paged_latent_decode_attention(q, self.latent_cache, context.decode_slots,
                                                                 context.decode_lengths, self.value_dim, self.scale)
        # contexts padded to the longest, masked
        slots = context.decode_slots  # [B, Lmax]
        rows = self.latent_cache.index_select(0, slots.reshape(-1)).view(*slots.shape, self.latent_dim)  # [B, Lmax, L]
        scores = torch.einsum("bhl,bsl->bhs", q, rows) * self.scale  # [B, H, Lmax]
        scores = scores.masked_fill(~context.decode_mask[:, 0], float("-inf"))  # mask [B, 1, Lmax]
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        return torch.einsum("bhs,bsc->bhc", probs, rows[..., : self.value_dim])


class MultiHeadLatentAttention(nn.Module):
    def __init__(self, dims: MLADims, rotary: YarnRotaryEmbedding, softmax_scale: float, absorbed: bool = True):
        super().__init__()
        self.dims, self.rotary, self.absorbed = dims, rotary, absorbed
        self.tile: int | None = None  # rows per product of the absorbed form's per-head matmuls (batch-invariant mode)
        d, h = dims.hidden_size, dims.num_heads
        if dims.q_lora_rank is None:
            self.q_proj = Linear(d, h * dims.qk_head_dim, bias=False)
        else:
            self.q_a_proj = Linear(d, dims.q_lora_rank, bias=dims.attention_bias)
            self.q_a_layernorm = RMSNorm(dims.q_lora_rank, LATENT_NORM_EPS)
            self.q_b_proj = Linear(dims.q_lora_rank, h * dims.qk_head_dim, bias=False)
        self.kv_a_proj_with_mqa = Linear(d, dims.latent_dim, bias=dims.attention_bias)
        self.kv_a_layernorm = RMSNorm(dims.kv_lora_rank, LATENT_NORM_EPS)
        self.kv_b_proj = Linear(dims.kv_lora_rank, h * (dims.qk_nope_head_dim + dims.v_head_dim), bias=False)
        self.o_proj = Linear(h * dims.v_head_dim, d, bias=dims.attention_bias)
        # Only the chosen form's attention module exists, so the engine pages exactly one kind of cache per layer.
        if absorbed:
            self.latent_attn = LatentAttention(h, dims.latent_dim, dims.kv_lora_rank, softmax_scale)
        else:
            self.attn = Attention(h, h, max(dims.qk_head_dim, dims.v_head_dim), softmax_scale)

    def forward(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # hidden [T, D], cos/sin [T, R] -> [T, D]
        dims = self.dims
        q_nope, q_rope = self._query(hidden).split([dims.qk_nope_head_dim, dims.qk_rope_head_dim], dim=-1)
        compressed, k_rope = self.kv_a_proj_with_mqa(hidden).split([dims.kv_lora_rank, dims.qk_rope_head_dim], -1)
        compressed = self.kv_a_layernorm(compressed)  # [T, C]
        q_rope = self.rotary.rotate(q_rope, cos, sin)  # [T, H, R]
        k_rope = self.rotary.rotate(k_rope[:, None, :], cos, sin)[:, 0]  # [T, R], shared by all heads
        if self.absorbed:
            out = self._absorbed(q_nope, q_rope, compressed, k_rope)
        else:
            out = self._naive(q_nope, q_rope, compressed, k_rope)
        return self.o_proj(out.flatten(1))  # [T, H * V] -> [T, D]

    def _query(self, hidden: torch.Tensor) -> torch.Tensor:
        # hidden [T, D] -> [T, H, N + R]
        if self.dims.q_lora_rank is None:
            q = self.q_proj(hidden)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(hidden)))
        return q.view(hidden.shape[0], self.dims.num_heads, self.dims.qk_head_dim)

    def _naive(self, q_nope, q_rope, compressed, k_rope) -> torch.Tensor:
        # -> [T, H, V]: expand the latent into per-head keys and values
        dims, t = self.dims, compressed.shape[0]
        kv = self.kv_b_proj(compressed).view(t, dims.num_heads, dims.qk_nope_head_dim + dims.v_head_dim)
        k_nope, v = kv.split([dims.qk_nope_head_dim, dims.v_head_dim], dim=-1)  # [T, H, N], [T, H, V]
        k = torch.cat((k_nope, k_rope[:, None, :].expand(-1, dims.num_heads, -1)), dim=-1)  # [T, H, N + R]
        q = torch.cat((q_nope, q_rope), dim=-1)  # [T, H, N + R]
        # The engine pages K and V in rows of one width W (the native kernel reads them so): zero columns change no
        # score (the scale is given) and give zero outputs, cut off after.
        q, k, v = (F.pad(x, (0, self.attn.head_dim - x.shape[-1])) for x in (q, k, v))  # [T, H, W] each
        return self.attn(q, k, v)[..., : dims.v_head_dim]

    def _absorbed(self, q_nope, q_rope, compressed, k_rope) -> torch.Tensor:
        # -> [T, H, V]: attend in latent space, then apply the value half of kv_b_proj per head
        dims = self.dims
        w_kv = self.kv_b_proj.weight.view(dims.num_heads, dims.qk_nope_head_dim + dims.v_head_dim, dims.kv_lora_rank)
        w_uk, w_uv = w_kv.split([dims.qk_nope_head_dim, dims.v_head_dim], dim=1)  # [H, N, C], [H, V, C]
        q_latent = self._per_head("thn,hnc->thc", q_nope, w_uk, dims.kv_lora_rank)  # [T, H, C]
        q = torch.cat((q_latent, q_rope), dim=-1)  # [T, H, L]
        latent = torch.cat((compressed, k_rope), dim=-1)  # [T, L]: the 576 values a cache row holds
        out_latent = self.latent_attn(q, latent)  # [T, H, C]
        return self._per_head("thc,hvc->thv", out_latent, w_uv, dims.v_head_dim)  # [T, H, V]

    def _per_head(self, equation: str, x: torch.Tensor, weight: torch.Tensor, out_dim: int) -> torch.Tensor:
        # x [T, H, A], weight per head -> [T, H, out_dim]: one product per head, on fixed row tiles in the
        # batch-invariant mode (a batched matmul's rows depend on T)
        if self.tile is None:
            return torch.einsum(equation, x, weight)
        t, h = x.shape[:2]
        flat = in_fixed_tiles(x.reshape(t, -1), lambda rows: torch.einsum(equation, rows.view(-1, *x.shape[1:]), weight)
                              .reshape(rows.shape[0], -1), h * out_dim, self.tile)  # [T, H * B]
        return flat.view(t, h, out_dim)
