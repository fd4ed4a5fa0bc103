"""The native BF16 linear of a few rows (csrc/bf16_skinny_gemm_avx512.cpp) against the FP32 product rounded once.

Tolerance: both sum BF16 products in FP32, in other orders, and round the sum to BF16 once, so outputs may differ by
one BF16 step (up to 2^-7 relative, at the bottom of a binade) where the FP32 sums straddle a rounding boundary;
1e-3 absolute for outputs near zero.
"""

import pytest
import torch
import torch.nn.functional as F

from kernels.bf16_skinny import bf16_skinny_linear, bf16_skinny_linear_reference, native_bf16_skinny

pytestmark = pytest.mark.skipif(native_bf16_skinny() is None, reason="needs AVX512-BF16 and a C++ compiler")
TOL = {"rtol": 2**-7, "atol": 1e-3}


def _product(m, n, k, bias, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=generator).bfloat16()  # [M, K]
    weight = (torch.randn(n, k, generator=generator) * k**-0.5).bfloat16()  # [N, K]
    b = torch.randn(n, generator=generator).bfloat16() if bias else None  # [N]
    return x, weight, b


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("n,k", [(16, 32), (128, 896), (896, 50), (4864, 896), (64, 4864)])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 8, 9])
def test_matches_the_fp32_product_rounded_once(m, n, k, bias):
    x, weight, b = _product(m, n, k, bias)
    out = bf16_skinny_linear(x, weight, b)
    assert out.shape == (m, n) and out.dtype == torch.bfloat16
    torch.testing.assert_close(out, bf16_skinny_linear_reference(x, weight, b), **TOL)
    torch.testing.assert_close(out, F.linear(x, weight, b), **TOL)  # and torch's BF16 GEMM, within the same step


def test_leading_dimensions_are_kept():
    x, weight, b = _product(6, 128, 96, bias=True)
    out = bf16_skinny_linear(x.view(2, 3, 96), weight, b)
    assert out.shape == (2, 3, 128)
    assert torch.equal(out.view(6, 128), bf16_skinny_linear(x, weight, b))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_a_row_computes_the_same_alone_or_in_any_batch_at_any_thread_count(threads):
    x, weight, b = _product(8, 256, 200, bias=True, seed=1)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        together = bf16_skinny_linear(x, weight, b)
        for row in range(8):
            assert torch.equal(bf16_skinny_linear(x[row:row + 1], weight, b)[0], together[row])
        assert torch.equal(bf16_skinny_linear(x[3:7], weight, b), together[3:7])
    finally:
        torch.set_num_threads(previous)


def test_bad_input_is_refused_before_the_kernel_reads_memory():
    x, weight, b = _product(2, 32, 64, bias=True)
    with pytest.raises(ValueError, match="multiple of 16"):
        bf16_skinny_linear(x, weight[:24])
    with pytest.raises(ValueError, match="do not fit"):
        bf16_skinny_linear(x[:, :32], weight)
    with pytest.raises(ValueError, match="do not fit"):
        bf16_skinny_linear(x, weight, b[:16])
    with pytest.raises(ValueError, match="bfloat16"):
        bf16_skinny_linear(x.float(), weight)
    with pytest.raises(ValueError, match="bfloat16"):
        bf16_skinny_linear(x, weight, b.float())
