"""Fused MoE over INT4 experts: route tokens, gate+up GEMM, SiLU·mul, down GEMM, weighted sum per token.

Shapes: T = tokens, k = experts per token, S = T * k slots, E = local experts, D = hidden size,
I = expert intermediate size, G = group size.
  hidden        [T, D]          bfloat16 / float16 / float32, contiguous
  topk_ids      [T, k]          int32/int64 global expert ids; ids outside [offset, offset + E) or -1 are other
                                ranks' experts (expert parallelism) and contribute nothing here
  topk_weights  [T, k]          router weights (already normalised and scaled by the caller)
  w13           [E, 2I, D/8]    int32 packed gate rows [0, I) then up rows [I, 2I); scale [E, 2I, D/G]
  w2            [E, D, I/8]     int32 packed down projection; scale [E, D, I/G]
  out           [T, D]          hidden's dtype, or out_dtype (float32: an expert-parallel rank's partial sum, added
                                to the other ranks' before the one rounding to hidden's dtype)
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels.backend import KernelInputError, resolve_backend
from kernels.pack import DEFAULT_GROUP_SIZE, PACK_FACTOR, dequantize_int4
from kernels.w4a16 import ACTIVATION_DTYPES, Int4Weight, int4_linear, prepare_int4


@dataclass(frozen=True, eq=False)
class Int4Experts:
    """A rank's local experts, validated and (on CPU) repacked once by `prepare_experts`."""

    w13_packed: torch.Tensor  # int32 [E, 2I, D/8]
    w13_scale: torch.Tensor  # [E, 2I, D/G]
    w2_packed: torch.Tensor  # int32 [E, D, I/8]
    w2_scale: torch.Tensor  # [E, D, I/G]
    group_size: int
    per_expert: tuple[tuple[Int4Weight, Int4Weight], ...]  # (w13, w2) of each expert, for the CPU path

    @property
    def num_experts(self) -> int:
        return self.w13_packed.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.w2_packed.shape[1]

    @property
    def intermediate_size(self) -> int:
        return self.w2_packed.shape[2] * PACK_FACTOR


def prepare_experts(w13_packed: torch.Tensor, w13_scale: torch.Tensor, w2_packed: torch.Tensor,
                    w2_scale: torch.Tensor, group_size: int = DEFAULT_GROUP_SIZE) -> Int4Experts:
    """Validate stacked expert weights (shapes in the module docstring) and prepare each expert's layout once."""
    if w13_packed.dim() != 3 or w2_packed.dim() != 3 or w13_packed.shape[0] != w2_packed.shape[0]:
        raise KernelInputError(f"w13 [E, 2I, D/8] and w2 [E, D, I/8] must stack the same experts, "
                               f"got {tuple(w13_packed.shape)} and {tuple(w2_packed.shape)}")
    hidden, inter = w2_packed.shape[1], w2_packed.shape[2] * PACK_FACTOR
    if tuple(w13_packed.shape[1:]) != (2 * inter, hidden // PACK_FACTOR):
        raise KernelInputError(f"w13 must be [E, {2 * inter}, {hidden // PACK_FACTOR}] to match w2, "
                               f"got {tuple(w13_packed.shape)}")
    per_expert = tuple(
        (prepare_int4(w13_packed[e], w13_scale[e], group_size), prepare_int4(w2_packed[e], w2_scale[e], group_size))
        for e in range(w13_packed.shape[0])
    )
    return Int4Experts(w13_packed, w13_scale, w2_packed, w2_scale, group_size, per_expert)


def _check_routing(hidden: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                   experts: Int4Experts) -> None:
    if hidden.dtype not in ACTIVATION_DTYPES or hidden.dim() != 2 or hidden.shape[1] != experts.hidden_size:
        raise KernelInputError(f"hidden must be a float tensor [T, {experts.hidden_size}], "
                               f"got {hidden.dtype} {tuple(hidden.shape)}")
    if topk_ids.dtype not in (torch.int32, torch.int64) or topk_ids.dim() != 2 or topk_ids.shape[0] != hidden.shape[0]:
        raise KernelInputError(f"topk_ids must be int32/int64 [T, k], got {topk_ids.dtype} {tuple(topk_ids.shape)}")
    if not topk_weights.is_floating_point() or topk_weights.shape != topk_ids.shape:
        raise KernelInputError(f"topk_weights must be float {tuple(topk_ids.shape)}, got {tuple(topk_weights.shape)}")
    if not (hidden.is_contiguous() and topk_ids.is_contiguous() and topk_weights.is_contiguous()):
        raise KernelInputError("hidden, topk_ids and topk_weights must be contiguous")


def local_slots(topk_ids: torch.Tensor, num_experts: int, expert_offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(local expert id [S], owned [S] bool) of every slot: owned when 0 <= id - offset < E and id >= 0."""
    ids = topk_ids.flatten().long()  # [S]
    local = ids - expert_offset  # [S]
    return local, (ids >= 0) & (local >= 0) & (local < num_experts)


def align_slots(topk_ids: torch.Tensor, num_experts: int, expert_offset: int,
                block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Group owned slots by expert, each expert padded to a multiple of block_m; no host synchronisation.

    Returns sorted_slots int32 [P] (padding = S) and block_experts int64 [P / block_m] (-1 = unused block),
    with P = S + E * (block_m - 1) rounded up to block_m: enough for any routing.
    """
    num_slots = topk_ids.numel()
    local, owned = local_slots(topk_ids, num_experts, expert_offset)
    key = torch.where(owned, local, num_experts)  # [S]; not owned sorts last
    order = torch.argsort(key, stable=True)  # [S] slots grouped by expert
    counts = torch.bincount(key, minlength=num_experts + 1)  # [E + 1]
    padded = (counts + block_m - 1) // block_m * block_m  # [E + 1]
    padded[num_experts] = 0
    padded_end = torch.cumsum(padded, 0)  # [E + 1]
    capacity = -(-(num_slots + num_experts * (block_m - 1)) // block_m) * block_m
    sorted_key = key[order]  # [S]
    rank = torch.arange(num_slots, device=key.device) - (torch.cumsum(counts, 0) - counts)[sorted_key]  # [S]
    dest = torch.where(sorted_key < num_experts, padded_end[sorted_key] - padded[sorted_key] + rank, capacity)
    sorted_slots = torch.full((capacity + 1,), num_slots, dtype=torch.int32, device=key.device)  # [P + 1]
    sorted_slots[dest] = order.to(torch.int32)  # not-owned slots all land on the extra last entry
    block_starts = torch.arange(0, capacity, block_m, device=key.device)  # [P / block_m]
    block_experts = torch.searchsorted(padded_end[:num_experts], block_starts, right=True)  # [P / block_m]
    block_experts = torch.where(block_experts < num_experts, block_experts, -1)
    return sorted_slots[:capacity], block_experts


def _expert_loop(hidden: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, experts: Int4Experts,
                 expert_offset: int, linear: Callable[[torch.Tensor, int, int], torch.Tensor],
                 out_dtype: torch.dtype) -> torch.Tensor:
    """Per-expert gather -> linear(x, e, 0 = w13 | 1 = w2) -> scatter-add; fp32 sum per token. -> [T, D]."""
    top_k = topk_ids.shape[1]
    local, owned = local_slots(topk_ids, experts.num_experts, expert_offset)
    slots = owned.nonzero().squeeze(1)  # [S_owned]
    slots = slots[torch.argsort(local[slots], stable=True)]  # [S_owned] grouped by expert
    counts = torch.bincount(local[slots], minlength=experts.num_experts).tolist()  # [E]
    out = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)  # [T, D]
    weights = topk_weights.flatten()  # [S]
    start = 0
    for e, count in enumerate(counts):
        if count == 0:
            continue
        expert_slots = slots[start:start + count]  # [c]
        start += count
        tokens = expert_slots // top_k  # [c]
        gate, up = linear(hidden[tokens], e, 0).chunk(2, dim=-1)  # [c, I] each
        down = linear(F.silu(gate) * up, e, 1)  # [c, D]
        out.index_add_(0, tokens, down.float() * weights[expert_slots, None].float())
    return out.to(out_dtype)


def moe_reference(hidden: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, experts: Int4Experts,
                  expert_offset: int = 0, *, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Ground truth: dequantise each used expert to fp32 and compute everything in fp32. -> [T, D]."""
    pairs = ((experts.w13_packed, experts.w13_scale), (experts.w2_packed, experts.w2_scale))

    def linear(x: torch.Tensor, e: int, which: int) -> torch.Tensor:
        packed, scale = pairs[which]
        return x.float() @ dequantize_int4(packed[e], scale[e], experts.group_size, dtype=torch.float32).t()

    return _expert_loop(hidden, topk_ids, topk_weights, experts, expert_offset, linear, out_dtype or hidden.dtype)


def _fused_moe_triton(hidden: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                      experts: Int4Experts, expert_offset: int, out_dtype: torch.dtype) -> torch.Tensor:
    from kernels.moe_triton import block_config, grouped_w4a16  # lazy: triton is imported only when it runs

    num_tokens, top_k = topk_ids.shape
    block_m, block_n, block_k = block_config(topk_ids.numel() / experts.num_experts)
    sorted_slots, block_experts = align_slots(topk_ids, experts.num_experts, expert_offset, block_m)
    inter = experts.intermediate_size
    gate_up = torch.empty(num_tokens * top_k, 2 * inter, dtype=hidden.dtype, device=hidden.device)  # [S, 2I]
    grouped_w4a16(hidden, experts.w13_packed, experts.w13_scale, gate_up, sorted_slots, block_experts,
                  block_m, block_n, block_k, experts.group_size, slots_per_a_row=top_k, slot_weights=None)
    act = F.silu(gate_up[:, :inter]) * gate_up[:, inter:]  # [S, I]; rows of slots not owned are never read
    down = torch.zeros(num_tokens * top_k, experts.hidden_size, dtype=torch.float32, device=hidden.device)  # [S, D]
    grouped_w4a16(act, experts.w2_packed, experts.w2_scale, down, sorted_slots, block_experts,
                  block_m, block_n, block_k, experts.group_size, slots_per_a_row=1, slot_weights=topk_weights)
    return down.view(num_tokens, top_k, experts.hidden_size).sum(dim=1).to(out_dtype)  # [T, D]


def fused_moe(hidden: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, experts: Int4Experts,
              *, expert_offset: int = 0, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """out [T, D] = Σ_j topk_weights[t, j] · down_e(SiLU(gate_e(h_t)) · up_e(h_t)) over this rank's experts e,
    summed in fp32 and returned in out_dtype (default: hidden's dtype)."""
    _check_routing(hidden, topk_ids, topk_weights, experts)
    backend = resolve_backend(hidden.device)
    out_dtype = out_dtype or hidden.dtype
    if backend == "reference":
        return moe_reference(hidden, topk_ids, topk_weights, experts, expert_offset, out_dtype=out_dtype)
    if backend == "triton":
        return _fused_moe_triton(hidden, topk_ids, topk_weights, experts, expert_offset, out_dtype)
    return _expert_loop(hidden, topk_ids, topk_weights, experts, expert_offset,
                        lambda x, e, which: int4_linear(x, experts.per_expert[e][which]), out_dtype)
