"""Native paged decode attention over the absorbed MLA latent cache against the torch reference (one sequence at a
time over its own context), and against torch's SDPA over keys = the latent rows, values = their first C columns.

Tolerance: as for the standard form (tests/kernels/test_paged_attention.py): FP32 within 2e-5; BF16 the FP32 result
over the same values rounded once, within one BF16 step. Head blocks: one sequence's 16 heads run as several tasks,
which must not change a head's bits.
"""

import pytest
import torch

from kernels.paged_attention import (
    native_paged_attention,
    paged_latent_decode_attention,
    paged_latent_decode_attention_reference,
)
from tests.kernels.parity import scattered_slot_lists

pytestmark = pytest.mark.skipif(native_paged_attention() is None, reason="needs AVX2 + FMA and a C++ compiler")
TOL = {"atol": 2e-5, "rtol": 2e-5}
WIDTH, VALUES = 72, 64  # latent width C + R and value width C of a small MLA (Kimi K2: 576 and 512)


def _batch(lengths, heads=16, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    slots_total = sum(lengths) + 8
    cache = torch.randn(slots_total, WIDTH, generator=generator)
    slots = scattered_slot_lists(lengths, slots_total, generator)
    q = torch.randn(len(lengths), heads, WIDTH, generator=generator)
    return q.to(dtype), cache.to(dtype), slots, torch.tensor(lengths)


@pytest.mark.parametrize("lengths", [[1], [5, 64, 65, 300], [1000, 3, 129]])
def test_matches_the_reference_and_sdpa_over_the_latent_rows(lengths):
    q, cache, slots, lens = _batch(lengths)
    scale = 0.1
    out = paged_latent_decode_attention(q, cache, slots, lens, VALUES, scale)
    assert out.shape == (len(lengths), 16, VALUES)
    torch.testing.assert_close(out, paged_latent_decode_attention_reference(q, cache, slots, lens, VALUES, scale),
                               **TOL)
    for row, length in enumerate(lengths):  # the latent as one key/value head shared by all query heads
        rows = cache[slots[row, :length]][None]  # [1, C_ctx, W]
        sdpa = torch.nn.functional.scaled_dot_product_attention(
            q[row][:, None], rows, rows[..., :VALUES], scale=scale, enable_gqa=True)[:, 0]  # [H, C]
        torch.testing.assert_close(out[row], sdpa, **TOL)


def test_bf16_is_the_fp32_result_over_the_same_values_rounded_once():
    q, cache, slots, lens = _batch([5, 64, 700], dtype=torch.bfloat16)
    out = paged_latent_decode_attention(q, cache, slots, lens, VALUES, 0.1)
    exact = paged_latent_decode_attention_reference(q.float(), cache.float(), slots, lens, VALUES, 0.1)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), exact.to(torch.bfloat16).float(), atol=2**-8, rtol=2**-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_sequence_gets_the_same_bits_alone_as_in_any_batch_and_any_thread_count(dtype):
    q, cache, slots, lens = _batch([300, 17, 1200, 64], seed=2, dtype=dtype)
    together = paged_latent_decode_attention(q, cache, slots, lens, VALUES, 0.1)
    threads = torch.get_num_threads()
    try:
        for count in (1, 2, 3):  # one sequence alone splits its heads into blocks by the thread count
            torch.set_num_threads(count)
            for row, length in enumerate(lens.tolist()):
                alone = paged_latent_decode_attention(q[row : row + 1], cache, slots[row : row + 1, :length],
                                                      lens[row : row + 1], VALUES, 0.1)
                assert torch.equal(alone[0], together[row])
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("bad", ["width", "values", "slot", "dtype", "cache_dims", "slot_rows", "length_rows"])
def test_bad_input_is_refused_before_the_kernel_reads_memory(bad):
    q, cache, slots, lens = _batch([10, 20])
    values = VALUES
    if bad == "slot_rows":  # views of the full slot lists and lengths: an unchecked kernel reads valid memory
        slots = slots[:1]
    elif bad == "length_rows":
        lens = lens[:1]
    elif bad == "width":
        q = q[..., :64]
    elif bad == "values":
        values = WIDTH + 8
    elif bad == "slot":
        slots[1, 3] = cache.shape[0]
    elif bad == "dtype":
        cache = cache.to(torch.bfloat16)
    elif bad == "cache_dims":
        cache = cache[:, None]
    with pytest.raises(ValueError):
        paged_latent_decode_attention(q, cache, slots, lens, values, 0.1)
