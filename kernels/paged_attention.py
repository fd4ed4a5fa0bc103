"""Paged decode attention on CPUs (csrc/paged_decode_attention.cpp) and its torch reference.

Each decoding sequence's one new query token attends over its own context, read in place from the paged K/V cache
through its slot list. The torch form gathers every context into a batch padded to the longest one and runs SDPA
over it: at 2500-token contexts that copies the K/V rows once more and reads them twice. The native kernel reads
each row once, for all query heads that share it (scripts/bench_cpu_attention.py measures both side by side).
FP32 or BF16 (widened to FP32 as loaded, the output rounded once), head dims a multiple of 8, on CPUs with AVX2 and
FMA; `native_paged_attention()` is None elsewhere or without a compiler, and callers keep the torch form.

Shapes: B = sequences, H = query heads, Hkv = key/value heads (H a multiple of it), D = head dim, S = cache slots,
L = longest context of the batch.
"""

import ctypes
import functools
import logging
import subprocess

import torch

from kernels.native_build import CSRC, SHARED_LIBRARY_FLAGS, build_error_details, compile_library, cpu_flags

logger = logging.getLogger(__name__)

SOURCE = CSRC / "paged_decode_attention.cpp"
FLAGS = (*SHARED_LIBRARY_FLAGS, "-mavx2", "-mfma")
LANES = 8  # the kernel reads head dims in whole AVX2 registers of 8 floats
DTYPES = (torch.float32, torch.bfloat16)
_POINTER, _INT64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


@functools.cache
def native_paged_attention() -> ctypes.CDLL | None:
    """The compiled kernel, or None where it cannot run (no AVX2/FMA, no compiler)."""
    if not {"avx2", "fma"} <= cpu_flags():
        return None
    try:
        library = compile_library("paged_decode_attention", SOURCE, FLAGS)
    except (OSError, subprocess.CalledProcessError) as error:
        logger.warning("native paged decode attention unavailable, using torch's: %s %s", error,
                       build_error_details(error))
        return None
    library.heavy_paged_decode_attention.argtypes = [_POINTER] * 6 + [_INT64] * 5 + [ctypes.c_float] + [_INT] * 2
    library.heavy_paged_decode_attention.restype = None
    return library


def takes(q: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """Whether the native kernel serves these tensors (FP32 or BF16 on a CPU, where it built)."""
    return (q.device.type == "cpu" and q.dtype in DTYPES and k_cache.dtype == q.dtype
            and q.shape[-1] % LANES == 0 and native_paged_attention() is not None)


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor,
                           lengths: torch.Tensor, scale: float) -> torch.Tensor:
    """q [B, H, D], k/v cache [S, Hkv, D], slots int64 [B, L], lengths int64 [B] -> [B, H, D] (native kernel).

    Rows of `slots` may share storage (stride 0, as `expand` gives): the queries of one prefill chunk read one
    context list, each up to its own position."""
    batch, heads, head_dim = q.shape
    kv_heads = k_cache.shape[1]
    if heads % kv_heads or k_cache.shape != v_cache.shape or k_cache.shape[2] != head_dim or head_dim % LANES:
        raise ValueError(f"query {tuple(q.shape)} does not fit caches {tuple(k_cache.shape)}, {tuple(v_cache.shape)}")
    if q.dtype not in DTYPES or k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise ValueError(f"query and caches must all be float32 or all bfloat16, not {q.dtype}, {k_cache.dtype}, "
                         f"{v_cache.dtype}")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("the K/V caches must be contiguous [S, Hkv, D] tensors")
    slots = slots.to(torch.int64)
    if slots.stride(1) != 1:
        slots = slots.contiguous()
    distinct = slots[:1] if slots.stride(0) == 0 else slots  # [B or 1, L]: min/max without walking shared rows
    if ((lengths.numel() and (lengths.min() < 0 or lengths.max() > slots.shape[1]))
            or (distinct.numel() and (distinct.min() < 0 or distinct.max() >= k_cache.shape[0]))):
        raise ValueError(f"lengths must lie in [0, {slots.shape[1]}] and slots in [0, {k_cache.shape[0]})")
    q, lengths = q.contiguous(), lengths.to(torch.int64).contiguous()
    out = torch.empty_like(q)
    native_paged_attention().heavy_paged_decode_attention(
        q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), slots.data_ptr(), lengths.data_ptr(), out.data_ptr(),
        batch, heads, kv_heads, head_dim, slots.stride(0), scale, torch.get_num_threads(), q.dtype == torch.bfloat16,
    )
    return out


def paged_decode_attention_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                     slots: torch.Tensor, lengths: torch.Tensor, scale: float) -> torch.Tensor:
    """The same attention in torch, one sequence at a time over exactly its own context: [B, H, D]."""
    outs = []
    for row, length in zip(slots, lengths.tolist(), strict=True):
        k = k_cache[row[:length]].transpose(0, 1)  # [Hkv, C, D]
        v = v_cache[row[:length]].transpose(0, 1)
        outs.append(torch.nn.functional.scaled_dot_product_attention(
            q[len(outs)][:, None], k, v, scale=scale, enable_gqa=True)[:, 0])  # [H, D]
    return torch.stack(outs)
