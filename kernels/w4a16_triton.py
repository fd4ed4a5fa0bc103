"""Triton W4A16 GEMM: y = x @ dequant(W)^T, reading the compressed-tensors INT4 layout directly.

Shapes: M = rows of x, N = out features, K = in features, G = group size.
"""

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from kernels.backend import KernelInputError


@triton.jit
def int4_tile_product(
    a_ptr, rows, mask_m, packed_ptr, scale_ptr, offs_n, mask_n, K,
    stride_am, stride_pn, stride_sn,
    GROUP_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_FP32: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """fp32 [BLOCK_M, BLOCK_N] = a[rows, :K] @ dequant(W)[offs_n, :K]^T.

    a       [*, K]      activations, rows selected by `rows` [BM] (masked by mask_m)
    packed  [N, K/8]    int32, eight int4 per word, lowest nibble first, stored as q + 8
    scale   [N, K/G]    group scales
    DOT_FP32: multiply in fp32; the CPU interpreter multiplies the bit patterns of bf16 tl.dot operands
    (triton-lang/triton#11584, "not supported yet").
    DOT_PRECISION: tl.dot's input_precision for fp32 activations ("ieee" or "tf32", see `dot_precision`).
    """
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)  # [BM, BN]
    row_starts = rows.to(tl.int64) * stride_am  # [BM]: int64, a may hold more than 2^31 elements
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)  # [BK]
        mask_k = offs_k < K
        a = tl.load(a_ptr + row_starts[:, None] + offs_k[None, :],
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)  # [BM, BK]
        mask_w = mask_k[:, None] & mask_n[None, :]
        words = tl.load(packed_ptr + offs_n[None, :] * stride_pn + (offs_k // 8)[:, None],
                        mask=mask_w, other=0)  # [BK, BN] int32
        q = ((words >> ((offs_k % 8) * 4)[:, None]) & 0xF) - 8  # [BK, BN] in [-8, 7]
        scale = tl.load(scale_ptr + offs_n[None, :] * stride_sn + (offs_k // GROUP_SIZE)[:, None],
                        mask=mask_w, other=0.0)  # [BK, BN]
        w = q.to(tl.float32) * scale.to(tl.float32)  # [BK, BN]
        if DOT_FP32:  # noqa: SIM108 (a constexpr branch reads clearer in a kernel)
            acc = tl.dot(a.to(tl.float32), w, acc)
        else:
            acc = tl.dot(a, w.to(a.dtype), acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def w4a16_gemm_kernel(
    # pointers
    x_ptr, packed_ptr, scale_ptr, y_ptr,
    # dimensions
    M, N, K,
    # row strides (the last dimension of every tensor is contiguous)
    stride_xm, stride_pn, stride_sn, stride_ym,
    # meta-parameters
    GROUP_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_FP32: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One [BLOCK_M, BLOCK_N] tile of y [M, N] = x [M, K] @ dequant(packed [N, K/8], scale [N, K/G])^T.

    y has x's dtype; accumulation is fp32; M, N and K tails are masked; row offsets are int64.
    """
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    mask_m = offs_m < M
    mask_n = offs_n < N
    acc = int4_tile_product(x_ptr, offs_m, mask_m, packed_ptr, scale_ptr, offs_n, mask_n, K,
                            stride_xm, stride_pn, stride_sn,
                            GROUP_SIZE, BLOCK_M, BLOCK_N, BLOCK_K, DOT_FP32, DOT_PRECISION)  # [BM, BN]
    tl.store(y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


def check_launchable(kernel: object, device: torch.device) -> None:
    """Triton runs CPU tensors only in its interpreter, which must be on before triton is first imported."""
    if device.type == "cpu" and not isinstance(kernel, InterpretedFunction):
        raise KernelInputError("Triton kernels on CPU tensors need TRITON_INTERPRET=1 set before triton is imported")


def dot_precision() -> str:
    """How the kernels multiply fp32 activations: as torch's own fp32 matmuls do. tl.dot's default on NVIDIA GPUs is
    TF32 (10-bit mantissas); torch's is IEEE fp32 unless torch.set_float32_matmul_precision allows TF32."""
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def block_config(m: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K) per shape: thin tiles for decode (more programs to stream the weights),
    square ones for prefill (more reuse of each dequantised tile)."""
    if m <= 16:
        return 16, 32, 128
    if m <= 64:
        return 32, 64, 64
    return 64, 128, 64


def w4a16_gemm(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, group_size: int) -> torch.Tensor:
    """Allocate and launch: x [M, K], packed int32 [N, K/8], scale [N, K/G] (validated by the caller) -> y [M, N]."""
    m, k = x.shape
    n = packed.shape[0]
    check_launchable(w4a16_gemm_kernel, x.device)
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)  # [M, N]
    if m == 0:
        return y
    block_m, block_n, block_k = block_config(m)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    w4a16_gemm_kernel[grid](
        x, packed, scale, y, m, n, k,
        x.stride(0), packed.stride(0), scale.stride(0), y.stride(0),
        GROUP_SIZE=group_size, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        DOT_FP32=x.device.type == "cpu", DOT_PRECISION=dot_precision(),
    )
    return y
