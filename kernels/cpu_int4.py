"""The CPU W4A16 path: the fastest correct kernel this machine has, chosen once per weight at prepare time.

Measured with scripts/bench_kernels.py --threads 1 (K = 7168 -> 2048 and back, each method cycling through weight
copies larger than the caches as a decode step streams its weights; 2-core AMD EPYC with AVX-512, one run on a busy
shared machine): the native AVX-512 kernel (kernels/cpu_native.py) runs 3.2-4.1x BF16 F.linear at M = 1, 1.3x at
M = 8 and 0.46-0.51x at M = 512 (prefill is compute-bound: BF16's GEMM wins); torch's
`_weight_int4pack_mm_for_cpu` 3.3-3.5x, 1.1x and 0.4x, so it is only the fallback for CPUs or machines that cannot
build the native kernel. (An earlier run, on a Xeon, timed one weight over and over, so part of it could stay in
the caches.) Both read the weights in their own layout, made here once.
On a CPU with AVX2 but no AVX-512 (2-core EPYC, 2 threads, `scripts/bench_kernels.py`), torch's kernel beats the
native AVX2 one on BF16 activations, so BF16 weights keep it; FP32 weights, whose activations torch's kernel
multiplies slowly (26.7 ms against 0.57 in BF16 at M = 1, 4864 x 896), take the AVX2 kernel. At K = 7168 -> N = 2048
it takes 2.8 ms at M = 1 and 9.0 ms at M = 8, against 130 and 202 ms dequantising the whole weight on every call and
3.8 and 27.9 ms for the dense FP32 weight. It computes every row alike, so its rows do not depend on the batch. Past
FP32_NATIVE_MAX_ROWS rows, dequantising and one dense GEMM is faster (K = 896 -> N = 4864: 42.2 against 43.4 ms at
M = 128; K = 7168 -> 2048: 146 against 224 ms at M = 128, 390 ms dequantising at M = 512).

Shapes: M = rows, N = out features, K = in features, G = group size.
"""

from dataclasses import dataclass

import torch

from kernels import cpu_native
from kernels.pack import INT4_OFFSET, unpack_int4

INT4PACK_GROUP_SIZES = (32, 64, 128, 256)  # what torch's int4pack kernel accepts
INT4PACK_INNER_K_TILES = 1  # unused by the CPU kernel's layout, but a required argument


@dataclass(frozen=True, eq=False)
class CpuInt4Layout:
    """Weights repacked for one CPU kernel: kind "native" (tiles, scales) or "int4pack" (weight, scales_and_zeros)."""

    kind: str
    weight: torch.Tensor
    scales: torch.Tensor
    group_size: int


FP32_NATIVE_MAX_ROWS = 128  # FP32 activations beyond this many rows: dequantise and one dense GEMM is faster


def prepare_cpu(packed: torch.Tensor, scale: torch.Tensor, group_size: int) -> CpuInt4Layout | None:
    """Repack packed int32 [N, K/8] + scale [N, K/G] for the best available CPU kernel; None if none applies. The
    scale's dtype is the model's: FP32 scales pick a kernel that keeps FP32 activations FP32 when there is one."""
    n, k = packed.shape[0], packed.shape[1] * 8
    native = cpu_native.native_kernel()
    if (cpu_native.supports_layout(n, k, group_size) and native is not None
            and (native[0] is cpu_native.AVX512 or scale.dtype == torch.float32)):
        tiles, scales = cpu_native.repack(packed, scale, group_size)
        return CpuInt4Layout("native", tiles, scales, group_size)
    if group_size in INT4PACK_GROUP_SIZES and n % 16 == 0:
        nibbles = unpack_int4(packed).to(torch.int32) + INT4_OFFSET  # [N, K] in [0, 15]
        weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(nibbles, INT4PACK_INNER_K_TILES)
        # The kernel computes (nibble - 8) * scale + zero: symmetric INT4 has zero = 0.
        scales_and_zeros = torch.stack([scale.t(), torch.zeros_like(scale.t())], dim=-1).contiguous()  # [K/G, N, 2]
        return CpuInt4Layout("int4pack", weight, scales_and_zeros, group_size)
    return None


def runs(layout: CpuInt4Layout, x: torch.Tensor) -> bool:
    """Whether `cpu_linear` computes x [M, K] on `layout` at x's precision and faster than dequantising: BF16 always;
    FP32 on the AVX2 kernel, up to FP32_NATIVE_MAX_ROWS rows."""
    if x.dtype == torch.bfloat16:
        return True
    native = cpu_native.native_kernel()
    return (x.dtype == torch.float32 and layout.kind == "native" and native is not None
            and native[0].takes(torch.float32) and x.shape[0] <= FP32_NATIVE_MAX_ROWS)


def cpu_linear(x: torch.Tensor, layout: CpuInt4Layout) -> torch.Tensor:
    """x [M, K] contiguous, of a dtype and size `runs` takes -> y [M, N] in x's dtype."""
    if layout.kind == "native":
        return cpu_native.gemm(x, layout.weight, layout.scales, layout.group_size)
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x, layout.weight, layout.group_size,
                                                      layout.scales.to(x.dtype))
