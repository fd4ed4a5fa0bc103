"""Native paged decode attention against the torch reference (one sequence at a time over its own context).

Tolerance: both compute in FP32 and differ by summation order and the kernel's exp polynomial (relative error
< 2e-7): 2e-5 absolute and relative on outputs of order 1. BF16 inputs: the kernel computes in FP32 and rounds its
output once, so it is the FP32 reference over the same BF16 values, rounded, within one BF16 step (2^-8 relative).
"""

import pytest
import torch

from kernels.paged_attention import native_paged_attention, paged_decode_attention, paged_decode_attention_reference
from tests.kernels.parity import scattered_slot_lists

pytestmark = pytest.mark.skipif(native_paged_attention() is None, reason="needs AVX2 + FMA and a C++ compiler")
TOL = {"atol": 2e-5, "rtol": 2e-5}


def _batch(lengths, heads, kv_heads, head_dim, seed=0, query_scale=1.0, dtype=torch.float32):
    """A cache of shuffled slots and each sequence's slot list, padded with slot 0 as the engine pads."""
    generator = torch.Generator().manual_seed(seed)
    slots_total = sum(lengths) + 8
    k_cache = torch.randn(slots_total, kv_heads, head_dim, generator=generator)
    v_cache = torch.randn(slots_total, kv_heads, head_dim, generator=generator)
    slots = scattered_slot_lists(lengths, slots_total, generator)
    q = torch.randn(len(lengths), heads, head_dim, generator=generator) * query_scale
    return q.to(dtype), k_cache.to(dtype), v_cache.to(dtype), slots, torch.tensor(lengths)


@pytest.mark.parametrize("heads,kv_heads,head_dim", [(14, 2, 64), (4, 4, 32), (6, 3, 40), (2, 1, 128)])
@pytest.mark.parametrize("lengths", [[1], [5, 64, 65, 300], [1000, 3, 129]])
def test_matches_the_reference(heads, kv_heads, head_dim, lengths):
    q, k_cache, v_cache, slots, lens = _batch(lengths, heads, kv_heads, head_dim)
    scale = head_dim**-0.5
    out = paged_decode_attention(q, k_cache, v_cache, slots, lens, scale)
    torch.testing.assert_close(out, paged_decode_attention_reference(q, k_cache, v_cache, slots, lens, scale), **TOL)


def test_large_scores_stay_finite_and_match():
    # scores in the hundreds: the running maximum must keep every exp in range
    q, k_cache, v_cache, slots, lens = _batch([200, 700], 8, 2, 64, seed=1, query_scale=40.0)
    out = paged_decode_attention(q, k_cache, v_cache, slots, lens, 0.125)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, paged_decode_attention_reference(q, k_cache, v_cache, slots, lens, 0.125), **TOL)


@pytest.mark.parametrize("lengths", [[1], [5, 64, 65, 300], [1000, 3, 129]])
def test_bf16_is_the_fp32_result_over_the_same_values_rounded_once(lengths):
    q, k_cache, v_cache, slots, lens = _batch(lengths, 14, 2, 64, dtype=torch.bfloat16)
    out = paged_decode_attention(q, k_cache, v_cache, slots, lens, 0.125)
    assert out.dtype == torch.bfloat16
    exact = paged_decode_attention_reference(q.float(), k_cache.float(), v_cache.float(), slots, lens, 0.125)
    torch.testing.assert_close(out.float(), exact.to(torch.bfloat16).float(), atol=2**-8, rtol=2**-8)
    # torch's own BF16 attention rounds its intermediate values too: within two steps of it
    torch.testing.assert_close(out, paged_decode_attention_reference(q, k_cache, v_cache, slots, lens, 0.125),
                               atol=2**-7, rtol=2**-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_sequence_gets_the_same_bits_alone_as_in_any_batch(dtype):
    q, k_cache, v_cache, slots, lens = _batch([300, 17, 1200, 64], 14, 2, 64, seed=2, dtype=dtype)
    together = paged_decode_attention(q, k_cache, v_cache, slots, lens, 0.125)
    for row, length in enumerate(lens.tolist()):
        alone = paged_decode_attention(q[row : row + 1], k_cache, v_cache, slots[row : row + 1, :length],
                                       lens[row : row + 1], 0.125)
        assert torch.equal(alone[0], together[row])


@pytest.mark.parametrize("bad", ["slot", "length", "heads", "head_dim", "dtype", "slot_rows", "length_rows"])
def test_bad_input_is_refused_before_the_kernel_reads_memory(bad):
    q, k_cache, v_cache, slots, lens = _batch([10, 20], 4, 2, 12 if bad == "head_dim" else 32)
    # fewer slot lists or lengths than queries: views of the full ones, so an unchecked kernel reads valid memory
    if bad == "slot_rows":
        slots = slots[:1]
    elif bad == "length_rows":
        lens = lens[:1]
    elif bad == "slot":
        slots[1, 3] = k_cache.shape[0]
    elif bad == "length":
        lens[0] = slots.shape[1] + 1
    elif bad == "heads":
        q = q[:, :3]
    elif bad == "dtype":
        q = q.to(torch.bfloat16)
    with pytest.raises(ValueError):
        paged_decode_attention(q, k_cache, v_cache, slots, lens, 0.1)
