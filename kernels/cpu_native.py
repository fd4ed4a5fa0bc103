"""The native W4A16 kernels (csrc/w4a16_avx512.cpp, csrc/w4a16_avx2.cpp): weight repacking, loading, ctypes calls.

Both read one weight layout. The AVX-512 kernel (x86-64-v4 with AVX512-BF16) takes BF16 activations and writes
BF16; the AVX2 one (AVX2 + FMA) multiplies FP32 activations in FP32 and writes FP32, so it also serves models that
compute in FP32, which otherwise dequantise the whole weight on every call. The best kernel the CPU runs is compiled
on first use (kernels/native_build.py). Without a compiler, or on a CPU with neither, `native_kernel()` returns None
and callers fall back to torch's int4 kernels.

Shapes: M = activation rows, N = out features, K = in features, G = group size.
  tiles  uint8 [N/16, K/2, 16]   see the layout note at the top of the C++ sources (csrc/w4a16_tiles.h: the loop)
  scales fp32  [N/16, K/G, 16]
"""

import ctypes
import functools
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch

from kernels.native_build import CSRC, SHARED_LIBRARY_FLAGS, build_error_details, compile_library, cpu_flags
from kernels.pack import INT4_OFFSET, unpack_int4

logger = logging.getLogger(__name__)

TILE_N = 16  # output rows per tile
CHUNK_K = 2  # inputs per 16-byte chunk (two nibbles per byte)
SHARED_HEADER = CSRC / "w4a16_tiles.h"  # included by both sources: part of their build's cache key
_POINTER, _INT64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


@dataclass(frozen=True)
class NativeKernel:
    """One build of the kernel: its source, compiler flags, the CPU flags it needs and the dtype it writes."""

    name: str
    source: Path
    compile_flags: tuple[str, ...]
    cpu_flags: tuple[str, ...]
    out_dtype: torch.dtype

    def takes(self, dtype: torch.dtype) -> bool:
        """Whether activations of `dtype` keep their precision through this kernel (it multiplies in FP32)."""
        return dtype == torch.bfloat16 or dtype == self.out_dtype


AVX512 = NativeKernel("avx512", CSRC / "w4a16_avx512.cpp",
                      (*SHARED_LIBRARY_FLAGS, "-march=x86-64-v4", "-mavx512bf16"),
                      ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx512_bf16"), torch.bfloat16)
AVX2 = NativeKernel("avx2", CSRC / "w4a16_avx2.cpp", (*SHARED_LIBRARY_FLAGS, "-mavx2", "-mfma"), ("avx2", "fma"),
                    torch.float32)
KERNELS = (AVX512, AVX2)  # the first one the CPU runs is used


def supports_layout(n: int, k: int, group_size: int) -> bool:
    """Whether a weight [N, K] with group size G can use the native tiles."""
    return n % TILE_N == 0 and group_size % CHUNK_K == 0 and k % group_size == 0


def repack(packed: torch.Tensor, scale: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Compressed-tensors packed int32 [N, K/8] + scale [N, K/G] -> (tiles uint8 [N/16, K/2, 16], scales fp32)."""
    n, k = packed.shape[0], packed.shape[1] * 8
    nibbles = (unpack_int4(packed).to(torch.int16) + INT4_OFFSET).to(torch.uint8)  # [N, K] in [0, 15]
    # Byte (tile t, chunk c, row r) = row r's inputs 2c (low nibble) and 2c + 1 (high nibble).
    by_chunk = nibbles.view(n // TILE_N, TILE_N, k // CHUNK_K, CHUNK_K).permute(0, 2, 1, 3)  # [N/16, K/2, 16, 2]
    tiles = (by_chunk[..., 0] | (by_chunk[..., 1] << 4)).contiguous()  # [N/16, K/2, 16]
    scales = scale.float().view(n // TILE_N, TILE_N, k // group_size).permute(0, 2, 1).contiguous()  # [N/16, K/G, 16]
    return tiles, scales


def _load(kernel: NativeKernel) -> ctypes.CDLL | None:
    try:
        library = compile_library(f"w4a16_{kernel.name}", kernel.source, kernel.compile_flags, (SHARED_HEADER,))
    except (OSError, subprocess.CalledProcessError) as error:
        logger.warning("native W4A16 kernel (%s) unavailable, using torch's int4 kernels: %s %s", kernel.name, error,
                       build_error_details(error))
        return None
    library.heavy_w4a16_gemm.argtypes = [_POINTER] * 4 + [_INT64] * 4 + [_INT]
    library.heavy_w4a16_gemm.restype = None
    return library


@functools.cache
def native_kernel() -> tuple[NativeKernel, ctypes.CDLL] | None:
    """The best kernel this CPU runs that builds here, and its compiled library; None when none does (a compiler
    too old for AVX512-BF16 still builds the AVX2 kernel)."""
    present = cpu_flags()
    for kernel in KERNELS:
        if all(flag in present for flag in kernel.cpu_flags) and (library := _load(kernel)) is not None:
            return kernel, library
    return None


def gemm(x: torch.Tensor, tiles: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    """x [M, K] of a dtype the kernel `takes` -> y [M, N] in that dtype (fp32 products and sums)."""
    kernel, library = native_kernel()
    rows = x.float().contiguous()  # [M, K]: the kernels multiply in fp32
    m, k = rows.shape
    n = tiles.shape[0] * TILE_N
    y = torch.empty(m, n, dtype=kernel.out_dtype)  # [M, N]
    library.heavy_w4a16_gemm(rows.data_ptr(), tiles.data_ptr(), scales.data_ptr(), y.data_ptr(), m, n, k, group_size,
                             torch.get_num_threads())
    return y.to(x.dtype)
