"""The Triton kernels address rows past 2^31 elements: row index × row stride is computed in int64.

Triton passes strides that fit in int32 as int32 and tl.arange is int32, so `row * stride` wraps once a tensor holds
2^31 elements (the MoE down pass's fp32 [T * k, D] output at T >= 37450 tokens of Kimi K2: 8 slots × 7168). The
tensors here are views of a sparse memory-mapped file whose rows sit 2^30 elements apart, so only the touched pages
exist; the views start 2^31 elements into the file so that a wrapped address still lands inside it (it reads the
file's zeros instead of faulting). Tolerances as in test_w4a16 (bf16 outputs; fp32 outputs of bf16 inputs).
"""

from pathlib import Path

import torch

from kernels.moe import align_slots
from kernels.moe_triton import grouped_w4a16
from kernels.w4a16 import w4a16_reference
from kernels.w4a16_triton import w4a16_gemm
from tests.kernels.parity import assert_parity, random_int4

BF16_TOL = {"atol": 1e-2, "rtol": 1.6e-2}
ROW_STRIDE = 2**30  # elements between rows: still an int32 stride
START = 2**31  # elements before the first row: the wrapped address of row 2 is the file's first element
ROWS, N, K = 3, 32, 64  # row 2 sits at START + 2^31 elements


def _far_rows(path: Path, dtype: torch.dtype, width: int) -> torch.Tensor:
    """A [ROWS, width] view whose row r starts r * ROW_STRIDE elements after the first, in a sparse file."""
    itemsize = torch.empty(0, dtype=dtype).element_size()
    size = START + (ROWS - 1) * ROW_STRIDE + width  # elements
    with path.open("wb") as file:
        file.truncate(size * itemsize)  # sparse: no page exists until written
    storage = torch.from_file(str(path), shared=True, size=size, dtype=dtype)
    return storage.as_strided((ROWS, width), (ROW_STRIDE, 1), START)


def test_w4a16_gemm_reads_rows_past_2_to_the_31_elements(tmp_path):
    generator = torch.Generator().manual_seed(0)
    packed, scale = random_int4(N, K, generator=generator)
    x = _far_rows(tmp_path / "x", torch.bfloat16, K)
    x.copy_(torch.randn(ROWS, K, generator=generator))
    y = w4a16_gemm(x, packed, scale, group_size=32)  # [ROWS, N]
    assert_parity(y, w4a16_reference(x.contiguous(), packed, scale), **BF16_TOL)


def test_grouped_w4a16_reads_and_writes_slots_past_2_to_the_31_elements(tmp_path):
    generator = torch.Generator().manual_seed(1)
    packed, scale = random_int4(N, K, generator=generator)
    a = _far_rows(tmp_path / "a", torch.bfloat16, K)  # one row per slot, as in the down pass
    a.copy_(torch.randn(ROWS, K, generator=generator))
    out = _far_rows(tmp_path / "out", torch.float32, N)
    block_m = 16
    sorted_slots, block_experts = align_slots(torch.zeros(ROWS, 1, dtype=torch.int64), 1, 0, block_m)
    grouped_w4a16(a, packed[None], scale[None], out, sorted_slots, block_experts, block_m, N, K, 32,
                  slots_per_a_row=1, slot_weights=None)
    assert_parity(out.clone(), w4a16_reference(a.contiguous().float(), packed, scale), **BF16_TOL)
