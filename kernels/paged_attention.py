"""Paged decode attention on CPUs (csrc/paged_decode_attention.cpp) and its torch reference.

Each decoding sequence's one new query token attends over its own context, read in place from the paged K/V cache
through its slot list. The torch form gathers every context into a batch padded to the longest one and runs SDPA
over it: at 2500-token contexts that copies the K/V rows once more and reads them twice. The native kernel reads
each row once, for all query heads that share it (scripts/bench_cpu_attention.py measures both side by side).
FP32 or BF16 (widened to FP32 as loaded, the output rounded once), head dims a multiple of 8, on CPUs with AVX2 and
FMA; `native_paged_attention()` is None elsewhere or without a compiler, and callers keep the torch form.
`paged_latent_decode_attention` is the same kernel over the absorbed multi-head latent attention's cache (DeepSeek V3,
Kimi K2): one latent row per token, all of it the key and its first C values the value, shared by every head.

Shapes: B = sequences, H = query heads, Hkv = key/value heads (H a multiple of it), D = head dim, S = cache slots,
L = longest context of the batch; latent attention: W = C + R latent width, C = value width.
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
    library.heavy_paged_decode_attention.argtypes = [_POINTER] * 6 + [_INT64] * 8 + [ctypes.c_float] + [_INT] * 2
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
    heads, head_dim = q.shape[1:]
    kv_heads = k_cache.shape[1]
    if heads % kv_heads or k_cache.shape != v_cache.shape or k_cache.shape[2] != head_dim or head_dim % LANES:
        raise ValueError(f"query {tuple(q.shape)} does not fit caches {tuple(k_cache.shape)}, {tuple(v_cache.shape)}")
    _check_dtypes_and_layout(q, k_cache, v_cache)
    out = q.new_empty(q.shape)
    _run(q, k_cache, v_cache, slots, lengths, out, kv_heads=kv_heads, row_stride=kv_heads * head_dim,
         head_block=heads // kv_heads, scale=scale)
    return out


def paged_latent_decode_attention(q: torch.Tensor, latent_cache: torch.Tensor, slots: torch.Tensor,
                                  lengths: torch.Tensor, value_dim: int, scale: float) -> torch.Tensor:
    """q [B, H, W] (absorbed queries), latent cache [S, W], slots int64 [B, L], lengths int64 [B] -> [B, H, C]
    with C = `value_dim`, the first C latent values (native kernel). Slot rows may share storage, as above."""
    batch, heads, width = q.shape
    if latent_cache.dim() != 2 or latent_cache.shape[1] != width or width % LANES or value_dim % LANES \
            or not 0 < value_dim <= width:
        raise ValueError(f"query {tuple(q.shape)} and value width {value_dim} do not fit the latent cache "
                         f"{tuple(latent_cache.shape)} (widths a multiple of {LANES})")
    _check_dtypes_and_layout(q, latent_cache, latent_cache)
    out = q.new_empty(batch, heads, value_dim)
    # one latent row serves all H heads: blocks of heads make tasks enough for every thread even for one sequence
    tasks_per_sequence = -(-torch.get_num_threads() // max(batch, 1))
    _run(q, latent_cache, latent_cache, slots, lengths, out, kv_heads=1, row_stride=width,
         head_block=-(-heads // tasks_per_sequence), scale=scale)
    return out


def _check_dtypes_and_layout(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    if q.dtype not in DTYPES or k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise ValueError(f"query and caches must all be float32 or all bfloat16, not {q.dtype}, {k_cache.dtype}, "
                         f"{v_cache.dtype}")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("the caches must be contiguous tensors")


def _run(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor, lengths: torch.Tensor,
         out: torch.Tensor, *, kv_heads: int, row_stride: int, head_block: int, scale: float) -> None:
    """Check the slot lists against the cache and call the kernel; a slot's key and value rows are `row_stride`
    values after the previous slot's (k and v caches have one layout), values as wide as `out`'s rows."""
    batch = q.shape[0]
    if slots.dim() != 2 or slots.shape[0] != batch or tuple(lengths.shape) != (batch,):
        raise ValueError(f"slots [B, L] and lengths [B] must have one row per query's B={batch}, "
                         f"got {tuple(slots.shape)} and {tuple(lengths.shape)}")
    slots = slots.to(torch.int64)
    if slots.stride(1) != 1:
        slots = slots.contiguous()
    distinct = slots[:1] if slots.stride(0) == 0 else slots  # [B or 1, L]: min/max without walking shared rows
    if ((lengths.numel() and (lengths.min() < 0 or lengths.max() > slots.shape[1]))
            or (distinct.numel() and (distinct.min() < 0 or distinct.max() >= k_cache.shape[0]))):
        raise ValueError(f"lengths must lie in [0, {slots.shape[1]}] and slots in [0, {k_cache.shape[0]})")
    q, lengths = q.contiguous(), lengths.to(torch.int64).contiguous()
    heads, key_dim = q.shape[1:]
    native_paged_attention().heavy_paged_decode_attention(
        q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), slots.data_ptr(), lengths.data_ptr(), out.data_ptr(),
        batch, heads, kv_heads, key_dim, out.shape[2], row_stride, head_block, slots.stride(0), scale,
        torch.get_num_threads(), q.dtype == torch.bfloat16,
    )


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


def paged_latent_decode_attention_reference(q: torch.Tensor, latent_cache: torch.Tensor, slots: torch.Tensor,
                                            lengths: torch.Tensor, value_dim: int, scale: float) -> torch.Tensor:
    """The latent form in torch, one sequence at a time over exactly its own context: [B, H, C]."""
    outs = []
    for row, length in zip(slots, lengths.tolist(), strict=True):
        rows = latent_cache[row[:length]]  # [C_ctx, W]
        scores = torch.einsum("hw,sw->hs", q[len(outs)].float(), rows.float()) * scale
        outs.append((torch.softmax(scores, dim=-1) @ rows[:, :value_dim].float()).to(q.dtype))  # [H, C]
    return torch.stack(outs)
