"""Dense BF16 linears of a few rows on CPUs with AVX512-BF16 (csrc/bf16_skinny_gemm_avx512.cpp) and their reference.

A decode step multiplies one to a few rows by every weight once, so it is bound by how fast the weights stream from
memory. On a 2-core AVX-512 EPYC torch's BF16 path read the output layer (151936 x 896) at ~17 GB/s where an FP32
sum streams ~33 GB/s; the native kernel reads each weight row once for all rows of the step and multiplies by
vdpbf16ps, summing in FP32 and rounding once (scripts/bench_cpu_decode.py measures both side by side). It takes the
model's weights as they are (no repacking). `native_bf16_skinny()` is None without AVX512-BF16 or a compiler, and
callers keep torch's form.

Shapes: M = rows (any; the kernel takes 4 per pass over a weight tile), N = out features (a multiple of 16),
K = in features.
"""

import ctypes
import functools
import logging
import subprocess

import torch

from kernels.native_build import CSRC, SHARED_LIBRARY_FLAGS, build_error_details, compile_library, cpu_flags

logger = logging.getLogger(__name__)

SOURCE = CSRC / "bf16_skinny_gemm_avx512.cpp"
FLAGS = (*SHARED_LIBRARY_FLAGS, "-march=x86-64-v4", "-mavx512bf16")
CPU_FLAGS = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"})
TILE_N = 16  # output rows per task
_POINTER, _INT64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


@functools.cache
def native_bf16_skinny() -> ctypes.CDLL | None:
    """The compiled kernel, or None where it cannot run (no AVX512-BF16, no compiler that targets it)."""
    if not cpu_flags() >= CPU_FLAGS:
        return None
    try:
        library = compile_library("bf16_skinny_gemm", SOURCE, FLAGS)
    except (OSError, subprocess.CalledProcessError) as error:
        logger.warning("native BF16 skinny GEMM unavailable, using torch's: %s %s", error, build_error_details(error))
        return None
    library.heavy_bf16_skinny_gemm.argtypes = [_POINTER] * 4 + [_INT64] * 3 + [_INT]
    library.heavy_bf16_skinny_gemm.restype = None
    return library


def _bf16_on_cpu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    # plain attribute tests: a decode step makes ~170 of these calls, and a generator over the tensors cost 2 us each
    return (x.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16 and x.is_cpu and weight.is_cpu
            and (bias is None or (bias.dtype == torch.bfloat16 and bias.is_cpu)))


def takes(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """Whether the native kernel serves this product (BF16 on a CPU, whole 16-row tiles, where it built)."""
    return (_bf16_on_cpu(x, weight, bias) and weight.dim() == 2 and weight.shape[0] % TILE_N == 0
            and native_bf16_skinny() is not None)


def bf16_skinny_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] bf16, weight [N, K] bf16, bias [N] bf16 or None -> [..., N] bf16 (native kernel)."""
    n, k = weight.shape
    if x.shape[-1] != k or n % TILE_N or (bias is not None and bias.shape != (n,)):
        raise ValueError(f"x {tuple(x.shape)}, weight {tuple(weight.shape)} and bias "
                         f"{None if bias is None else tuple(bias.shape)} do not fit (N a multiple of {TILE_N})")
    if not _bf16_on_cpu(x, weight, bias):
        raise ValueError("x, weight and bias must be bfloat16 CPU tensors")
    rows = x.reshape(-1, k).contiguous()  # [M, K]
    weight = weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    out = rows.new_empty(rows.shape[0], n)  # [M, N]
    native_bf16_skinny().heavy_bf16_skinny_gemm(
        rows.data_ptr(), weight.data_ptr(), None if bias is None else bias.data_ptr(), out.data_ptr(),
        rows.shape[0], n, k, torch.get_num_threads())
    return out.reshape(*x.shape[:-1], n)


def bf16_skinny_linear_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                                 ) -> torch.Tensor:
    """The same product in FP32, rounded to BF16 once: [..., N]."""
    out = x.float() @ weight.float().T + (0 if bias is None else bias.float())
    return out.to(torch.bfloat16)
