"""Batch-invariant linears: every matmul runs on row tiles of one fixed height, so a token's output never depends on
how many other tokens share its step.

A BF16 GEMM picks its kernel and blocking by the number of rows M; on a CPU with AMX the rows of a 40-row product
differ from the same rows computed alone by up to 0.25 (measured on the 4864 x 896 MLP and the 151936 x 896 output
layer), enough to flip 1 of 8 greedy answers between a batch of 8 and one at a time. A fixed tile height makes every
call the same shape: the last tile is padded with zero rows, which cost compute but change no other row. The price
is one weight read per tile instead of one per step, so prefill slows most; decoding, bandwidth-bound, pads a few
rows to the tile. In this mode decoding attention runs per sequence over exactly its own context (padding to the
batch's longest context changed BF16 outputs by up to 2e-3; runtime/layers/attention.py); prefill attention already
runs per sequence, and RMSNorm, rotary and activations per row; INT4 linears run on the same tiles, and the
scheduler chunks a long prompt at fixed positions of its own. A mixture-of-experts layer computes its router's
scores in the same tiles and runs its INT4 experts one at a time on them (runtime/layers/moe.py), not in one fused
call, and the absorbed MLA (runtime/layers/mla.py) its per-head products; the scheduler uses a prefix-cache hit in
whole chunks only. With the native paged attention (CPUs with AVX2; kernels/paged_attention.py), standard and
latent, prefill chunks attend as decodes do, so cached blocks a sequence's own decoding wrote equal their recompute
after an eviction or a preemption. Without it (GPUs, no compiler) they still differ (a prompt reusing 224 tokens of
which 124 were decoded: first logprob -1.5074741 against -1.5074750 all prefilled, FP32).
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from runtime.layers.linear import linear

TILE_ROWS = 64


def in_fixed_tiles(x: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor], out_features: int,
                   tile: int = TILE_ROWS) -> torch.Tensor:
    # x [..., K] -> [..., N], `compute` taking [tile, K] to [tile, N] on every tile, the last padded with zero rows
    rows = x.reshape(-1, x.shape[-1])  # [M, K]
    m = rows.shape[0]
    padded = F.pad(rows, (0, 0, 0, -m % tile))  # [ceil(M / tile) * tile, K]
    out = torch.empty(padded.shape[0], out_features, dtype=x.dtype, device=x.device)  # [M', N]
    for start in range(0, padded.shape[0], tile):
        out[start:start + tile] = compute(padded[start:start + tile])
    return out[:m].reshape(*x.shape[:-1], out_features)


def fixed_tile_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      tile: int = TILE_ROWS) -> torch.Tensor:
    # x [..., K], weight [N, K] -> [..., N], each row computed in a [tile, K] x [K, N] product
    return in_fixed_tiles(x, lambda rows: linear(rows, weight, bias), weight.shape[0], tile)


class FixedTileLinear(nn.Module):
    """An nn.Linear's parameters, applied in fixed row tiles."""

    def __init__(self, linear: nn.Linear, tile: int = TILE_ROWS):
        super().__init__()
        self.weight, self.bias, self.tile = linear.weight, linear.bias, tile

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fixed_tile_linear(x, self.weight, self.bias, self.tile)


def make_batch_invariant(model: nn.Module, tile: int = TILE_ROWS) -> int:
    """Swap every nn.Linear of `model` for a FixedTileLinear over the same parameters, in place, and set the tile of
    every layer that computes in tiles when it has one (a `tile` attribute: INT4 linears, a mixture of experts and
    its router, MLA); the number of layers that did not compute in tiles before. A tied output layer (no lm_head, the
    embedding as the output matrix) gets one too. Layers tiled before take the new tile: the model is shared by every
    engine built on it."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, FixedTileLinear(child, tile))
                swapped += 1
    for module in model.modules():  # FixedTileLinear, Int4Linear, a mixture of experts and its router; `model` too
        if hasattr(module, "tile"):
            swapped += module.tile is None
            module.tile = tile
    if getattr(model, "lm_head", False) is None and hasattr(model, "model"):  # tied: compute_logits reads lm_head
        tied = nn.Linear(1, 1, bias=False, device="meta")
        tied.weight = model.model.embed_tokens.weight
        model.lm_head = FixedTileLinear(tied, tile)
        swapped += 1
    return swapped
