"""Triton grouped INT4 GEMM for fused MoE: one program computes one block of expert-contiguous slots.

Shapes: S = T * k assignment slots (token t's j-th expert is slot t*k + j), E = local experts, N = out features,
K = in features, G = group size, P = padded slot count (a multiple of BLOCK_M).
"""

import torch
import triton
import triton.language as tl

from kernels.w4a16_triton import check_launchable, dot_precision, int4_tile_product


@triton.jit
def grouped_w4a16_kernel(
    # pointers
    a_ptr, packed_ptr, scale_ptr, out_ptr, sorted_slots_ptr, block_experts_ptr, slot_weights_ptr,
    # dimensions
    N, K, num_slots,
    # strides (the last dimension of every tensor is contiguous)
    stride_am, stride_pe, stride_pn, stride_se, stride_sn, stride_om,
    # meta-parameters
    SLOTS_PER_A_ROW: tl.constexpr, MUL_SLOT_WEIGHT: tl.constexpr, GROUP_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_FP32: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """out[slot, n-tile] = a[slot // SLOTS_PER_A_ROW] @ dequant(W[expert])^T (× slot weight) for one slot block.

    a             [S / SLOTS_PER_A_ROW, K]  activations (tokens for gate/up, slots for down)
    packed        [E, N, K/8]  int32          scale [E, N, K/G]
    out           [S, N]       rows of slots this rank does not own are left untouched
    sorted_slots  [P]          int32 slot ids grouped by expert, each expert padded to BLOCK_M with S
    block_experts [P/BLOCK_M]  int64 local expert of each block, -1 for unused blocks (the program exits)
    slot_weights  [S]          router weights, read when MUL_SLOT_WEIGHT
    """
    pid_m = tl.program_id(0)
    expert = tl.load(block_experts_ptr + pid_m)
    if expert < 0:
        return
    slots = tl.load(sorted_slots_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))  # [BM]
    mask_m = slots < num_slots
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    mask_n = offs_n < N
    acc = int4_tile_product(a_ptr, slots // SLOTS_PER_A_ROW, mask_m,
                            packed_ptr + expert * stride_pe, scale_ptr + expert * stride_se,
                            offs_n, mask_n, K, stride_am, stride_pn, stride_sn,
                            GROUP_SIZE, BLOCK_M, BLOCK_N, BLOCK_K, DOT_FP32, DOT_PRECISION)  # [BM, BN]
    if MUL_SLOT_WEIGHT:
        acc = acc * tl.load(slot_weights_ptr + slots, mask=mask_m, other=0.0).to(tl.float32)[:, None]
    tl.store(out_ptr + slots.to(tl.int64)[:, None] * stride_om + offs_n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


def block_config(slots_per_expert: float) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K): small slot blocks at decode (few slots per expert), larger at prefill."""
    if slots_per_expert <= 16:
        return 16, 64, 128
    return 64, 128, 64


def grouped_w4a16(a: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, out: torch.Tensor,
                  sorted_slots: torch.Tensor, block_experts: torch.Tensor, block_m: int, block_n: int, block_k: int,
                  group_size: int, slots_per_a_row: int, slot_weights: torch.Tensor | None) -> None:
    """Launch over all blocks of `sorted_slots` (see the kernel's docstring for shapes); writes into `out`."""
    check_launchable(grouped_w4a16_kernel, a.device)
    n, k = packed.shape[1], a.shape[1]
    grid = (block_experts.numel(), triton.cdiv(n, block_n))
    grouped_w4a16_kernel[grid](
        a, packed, scale, out, sorted_slots, block_experts,
        slot_weights if slot_weights is not None else out,
        n, k, out.shape[0],
        a.stride(0), packed.stride(0), packed.stride(1), scale.stride(0), scale.stride(1), out.stride(0),
        SLOTS_PER_A_ROW=slots_per_a_row, MUL_SLOT_WEIGHT=slot_weights is not None, GROUP_SIZE=group_size,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, DOT_FP32=a.device.type == "cpu",
        DOT_PRECISION=dot_precision(),
    )
