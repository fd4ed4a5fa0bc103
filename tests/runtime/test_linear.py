"""Dense linears (runtime/layers/linear.py): the weight-left form computes what F.linear computes, where it runs;
BF16 decode rows go to the native kernel (tests/kernels/test_bf16_skinny.py checks its numbers)."""

import pytest
import torch
import torch.nn.functional as F

from kernels.bf16_skinny import bf16_skinny_linear, native_bf16_skinny
from runtime.layers.linear import BF16_KERNEL_MAX_ROWS, SKINNY_MAX_ROWS, Linear, linear, uses_weight_left

# 1024 x 1024 FP32 sums over K = 1024: the two forms' summation orders differ by rounding only.
RTOL, ATOL = 1e-5, 1e-5


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(1,), (2,), (8,), (SKINNY_MAX_ROWS,), (SKINNY_MAX_ROWS + 1,), (2, 5)])
def test_linear_matches_f_linear_at_any_row_count(shape, bias):
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(1024, 1024, generator=gen) / 32
    b = torch.randn(1024, generator=gen) if bias else None
    x = torch.randn(*shape, 1024, generator=gen)
    out = linear(x, weight, b)
    assert out.shape == (*shape, 1024) and out.is_contiguous()
    torch.testing.assert_close(out, F.linear(x, weight, b), rtol=RTOL, atol=ATOL)


def test_the_weight_left_form_runs_for_a_decode_batch_of_large_fp32_weights_only():
    weight, x = torch.empty(4864, 896), torch.empty(8, 896)
    assert uses_weight_left(x, weight)
    assert not uses_weight_left(x[:1], weight)  # a matrix-vector product
    assert not uses_weight_left(torch.empty(SKINNY_MAX_ROWS + 1, 896), weight)  # a prefill chunk
    assert not uses_weight_left(x, torch.empty(128, 896))  # a small weight
    assert not uses_weight_left(x.bfloat16(), weight.bfloat16())


def test_bf16_decode_rows_run_on_the_native_kernel_where_it_builds_and_other_products_as_f_linear():
    gen = torch.Generator().manual_seed(1)
    weight, b = torch.randn(1024, 1024, generator=gen).bfloat16(), torch.randn(1024, generator=gen).bfloat16()
    x = torch.randn(BF16_KERNEL_MAX_ROWS + 1, 1024, generator=gen).bfloat16()
    decode = x[:BF16_KERNEL_MAX_ROWS]
    if native_bf16_skinny() is not None:
        assert torch.equal(linear(decode, weight, b), bf16_skinny_linear(decode, weight, b))
    else:
        assert torch.equal(linear(decode, weight, b), F.linear(decode, weight, b))
    assert torch.equal(linear(x, weight, b), F.linear(x, weight, b))  # a prefill chunk
    assert torch.equal(linear(decode.half(), weight.half()), F.linear(decode.half(), weight.half()))


def test_a_linear_module_keeps_nn_linears_parameters_and_names():
    layer = Linear(1024, 1024, bias=True)
    assert isinstance(layer, torch.nn.Linear)
    assert set(layer.state_dict()) == {"weight", "bias"}
    x = torch.randn(4, 1024)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=RTOL, atol=ATOL)
