"""W4A16 linear: every backend against the dequantise-then-matmul reference, input validation, dispatch.

Triton runs in its CPU interpreter here (tests/conftest.py sets TRITON_INTERPRET=1 without CUDA): tiny shapes.
Tolerances: bf16 outputs within two bf16 steps (rtol 1.6e-2; the interpreter truncates on store, the other
kernels round) plus atol 1e-2 for outputs near zero; fp32 outputs differ only by summation order (1e-4).
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels
from kernels import cpu_int4, cpu_native
from kernels.backend import BACKEND_ENV, resolve_backend
from kernels.w4a16 import prepare_int4
from tests.kernels.parity import assert_parity, random_int4

BF16_TOL = {"atol": 1e-2, "rtol": 1.6e-2}
FP32_TOL = {"atol": 1e-4, "rtol": 1e-4}
ROWS = [1, 3, 17]
SHAPES = [(48, 64), (40, 96), (16, 224)]  # (N, K): N = 40 leaves a ragged tail in every N tile


def _inputs(m, n, k, dtype=torch.bfloat16, seed=0, group_size=32):
    generator = torch.Generator().manual_seed(seed)
    packed, scale = random_int4(n, k, generator=generator, group_size=group_size)
    x = torch.randn(m, k, generator=generator).to(dtype)
    return x, packed, scale


@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("m", ROWS)
def test_triton_matches_reference(m, n, k):
    x, packed, scale = _inputs(m, n, k)
    with kernels.use_backend("triton"):
        y = kernels.w4a16_linear(x, packed, scale)
    assert y.shape == (m, n) and y.dtype == torch.bfloat16
    assert_parity(y, kernels.w4a16_reference(x, packed, scale), **BF16_TOL)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, FP32_TOL), (torch.float16, BF16_TOL)])
def test_triton_other_activation_dtypes(dtype, tol):
    x, packed, scale = _inputs(5, 40, 64, dtype)
    with kernels.use_backend("triton"):
        y = kernels.w4a16_linear(x, packed, scale)
    assert y.dtype == dtype
    assert_parity(y, kernels.w4a16_reference(x, packed, scale), **tol)


@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("m", [*ROWS, 64])
def test_cpu_path_matches_reference(m, n, k):
    x, packed, scale = _inputs(m, n, k)
    with kernels.use_backend("cpu"):
        y = kernels.w4a16_linear(x, packed, scale)
    assert_parity(y, kernels.w4a16_reference(x, packed, scale), **BF16_TOL)


@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 20), tiles=st.integers(1, 4), groups=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_cpu_path_matches_reference_on_random_shapes(m, tiles, groups, seed):
    x, packed, scale = _inputs(m, 16 * tiles, 32 * groups, seed=seed)
    with kernels.use_backend("cpu"):
        y = kernels.w4a16_linear(x, packed, scale)
    assert_parity(y, kernels.w4a16_reference(x, packed, scale), **BF16_TOL)


@pytest.mark.parametrize("backend", ["triton", "cpu"])
@pytest.mark.parametrize("group_size", [64, 128])
def test_larger_group_sizes(backend, group_size):
    x, packed, scale = _inputs(3, 48, 256, group_size=group_size)
    with kernels.use_backend(backend):
        y = kernels.w4a16_linear(x, packed, scale, group_size)
    assert_parity(y, kernels.w4a16_reference(x, packed, scale, group_size), **BF16_TOL)


def test_cpu_path_without_native_kernel_uses_torch_int4pack(monkeypatch):
    monkeypatch.setattr(cpu_native, "native_kernel", lambda: None)
    x, packed, scale = _inputs(3, 48, 64)
    weight = prepare_int4(packed, scale)
    assert weight.cpu.kind == "int4pack"
    with kernels.use_backend("cpu"):
        assert_parity(kernels.int4_linear(x, weight), kernels.w4a16_reference(x, packed, scale), **BF16_TOL)


@pytest.mark.skipif(cpu_native.native_kernel() is None, reason="this CPU or machine cannot build a native kernel")
def test_the_native_kernel_is_chosen_where_it_applies():
    # BF16 weights: the AVX-512 kernel, else torch's int4pack (faster than the AVX2 kernel on BF16); FP32: native
    _, packed, scale = _inputs(1, 48, 64)
    kernel, _ = cpu_native.native_kernel()
    assert prepare_int4(packed, scale).cpu.kind == ("native" if kernel is cpu_native.AVX512 else "int4pack")
    assert prepare_int4(packed, scale.float()).cpu.kind == "native"


def test_a_kernel_that_does_not_build_gives_way_to_the_next_one(monkeypatch):
    monkeypatch.setattr(cpu_native, "cpu_flags", lambda: {*cpu_native.AVX512.cpu_flags, *cpu_native.AVX2.cpu_flags})
    monkeypatch.setattr(cpu_native, "_load", lambda kernel: None if kernel is cpu_native.AVX512 else "library")
    cpu_native.native_kernel.cache_clear()
    try:
        assert cpu_native.native_kernel() == (cpu_native.AVX2, "library")
        monkeypatch.setattr(cpu_native, "_load", lambda kernel: None)
        cpu_native.native_kernel.cache_clear()
        assert cpu_native.native_kernel() is None
    finally:
        monkeypatch.undo()
        cpu_native.native_kernel.cache_clear()


NATIVE_FP32 = cpu_native.native_kernel() is not None and cpu_native.native_kernel()[0].takes(torch.float32)
needs_native_fp32 = pytest.mark.skipif(not NATIVE_FP32, reason="no native FP32 kernel here (AVX2 + FMA, no AVX-512)")


@needs_native_fp32
@pytest.mark.parametrize("n,k", [(48, 64), (16, 224), (2048, 7168), (7168, 2048)])
@pytest.mark.parametrize("m", [1, 3, 17, cpu_int4.FP32_NATIVE_MAX_ROWS])
def test_fp32_activations_run_on_the_avx2_kernel_at_fp32_precision(m, n, k):
    x, packed, scale = _inputs(m, n, k, torch.float32)
    weight = prepare_int4(packed, scale.float())
    assert weight.cpu.kind == "native" and cpu_int4.runs(weight.cpu, x)
    with kernels.use_backend("cpu"):
        y = kernels.int4_linear(x, weight)
    assert y.dtype == torch.float32
    assert_parity(y, kernels.w4a16_reference(x, packed, scale), **FP32_TOL)


@needs_native_fp32
@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 20), tiles=st.integers(1, 4), groups=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_the_avx2_kernel_matches_reference_on_random_shapes(m, tiles, groups, seed):
    x, packed, scale = _inputs(m, 16 * tiles, 32 * groups, torch.float32, seed=seed)
    weight = prepare_int4(packed, scale.float())
    with kernels.use_backend("cpu"):
        assert_parity(kernels.int4_linear(x, weight), kernels.w4a16_reference(x, packed, scale), **FP32_TOL)
        bf16 = kernels.int4_linear(x.bfloat16(), weight)  # BF16 in, FP32 products, BF16 out
    assert bf16.dtype == torch.bfloat16
    assert_parity(bf16, kernels.w4a16_reference(x.bfloat16(), packed, scale), **BF16_TOL)


@needs_native_fp32
def test_the_avx2_kernel_computes_a_row_the_same_in_any_batch():
    x, packed, scale = _inputs(cpu_int4.FP32_NATIVE_MAX_ROWS, 48, 64, torch.float32)
    weight = prepare_int4(packed, scale.float())
    with kernels.use_backend("cpu"):
        batch = kernels.int4_linear(x, weight)
        for rows in ([0], [5], [len(x) - 1], [3, 7, 100], list(range(40))):
            assert torch.equal(kernels.int4_linear(x[rows].contiguous(), weight), batch[rows])


@needs_native_fp32
def test_many_fp32_rows_dequantise_instead():
    x, packed, scale = _inputs(cpu_int4.FP32_NATIVE_MAX_ROWS + 1, 48, 64, torch.float32)
    weight = prepare_int4(packed, scale.float())
    assert not cpu_int4.runs(weight.cpu, x) and cpu_int4.runs(weight.cpu, x[:-1])
    with kernels.use_backend("cpu"):
        assert_parity(kernels.int4_linear(x, weight), kernels.w4a16_reference(x, packed, scale), **FP32_TOL)


@pytest.mark.parametrize("n,k", [(2048, 7168), (7168, 2048)])
@pytest.mark.parametrize("m", [1, 8])
def test_cpu_path_at_kimi_expert_shapes(m, n, k):
    x, packed, scale = _inputs(m, n, k)
    with kernels.use_backend("cpu"):
        y = kernels.int4_linear(x, prepare_int4(packed, scale))
    assert_parity(y, kernels.w4a16_reference(x, packed, scale), **BF16_TOL)


@pytest.mark.parametrize("backend", ["triton", "cpu"])
def test_bias_and_leading_dimensions(backend):
    x, packed, scale = _inputs(6, 48, 64)
    x = x.view(2, 3, 64)
    bias = torch.randn(48, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    with kernels.use_backend(backend):
        y = kernels.w4a16_linear(x, packed, scale, bias=bias)
    assert y.shape == (2, 3, 48)
    # The bias is added to the rounded bf16 product, so near-cancelling sums keep the product's rounding error
    # (up to two steps at |y| ~ 4): an absolute tolerance at that scale.
    assert_parity(y, kernels.w4a16_reference(x, packed, scale, bias=bias), atol=4e-2, rtol=1.6e-2)


@pytest.mark.parametrize("backend", ["reference", "triton", "cpu"])
@pytest.mark.parametrize("bias_dtype", [torch.float32, torch.float16])
def test_a_bias_of_another_dtype_keeps_the_output_in_xs_dtype(backend, bias_dtype):
    x, packed, scale = _inputs(3, 48, 64)
    bias = torch.randn(48, generator=torch.Generator().manual_seed(1)).to(bias_dtype)
    with kernels.use_backend(backend):
        y = kernels.w4a16_linear(x, packed, scale, bias=bias)
    assert y.dtype == x.dtype
    assert_parity(y, kernels.w4a16_reference(x, packed, scale, bias=bias), atol=4e-2, rtol=1.6e-2)


def test_fp32_activations_on_bf16_weights_fall_back_to_the_reference():
    x, packed, scale = _inputs(3, 48, 64, torch.float32)
    with kernels.use_backend("cpu"):
        assert_parity(kernels.w4a16_linear(x, packed, scale), kernels.w4a16_reference(x, packed, scale), **FP32_TOL)


@pytest.mark.parametrize("backend", ["reference", "triton", "cpu"])
def test_invalid_inputs_raise_value_errors(backend):
    x, packed, scale = _inputs(3, 48, 64)
    with kernels.use_backend(backend):
        with pytest.raises(ValueError, match="bfloat16, float16 or float32"):
            kernels.w4a16_linear(x.to(torch.int32), packed, scale)
        with pytest.raises(ValueError, match="contiguous"):
            kernels.w4a16_linear(torch.randn(64, 3).to(torch.bfloat16).t(), packed, scale)
        with pytest.raises(ValueError, match="multiple of the group size"):
            kernels.w4a16_linear(x[:, :40].contiguous(), packed[:, :5].contiguous(), scale[:, :1].contiguous())
        with pytest.raises(ValueError, match="K=64"):
            kernels.w4a16_linear(x[:, :32].contiguous(), packed, scale)
        with pytest.raises(ValueError, match="int32"):
            kernels.w4a16_linear(x, packed.to(torch.int64), scale)
        with pytest.raises(ValueError, match="scale must be"):
            kernels.w4a16_linear(x, packed, scale[:, :1].contiguous())


def test_backend_selection(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_backend(cpu) == "cpu"
    assert resolve_backend(torch.device("cuda")) == "triton"
    monkeypatch.setenv(BACKEND_ENV, "reference")
    assert resolve_backend(cpu) == "reference"
    with kernels.use_backend("triton"):
        assert resolve_backend(cpu) == "triton"
    monkeypatch.setenv(BACKEND_ENV, "fast")
    with pytest.raises(ValueError, match="unknown kernel backend 'fast'"):
        resolve_backend(cpu)


def test_triton_multiplies_fp32_activations_at_torchs_fp32_matmul_precision():
    from kernels.w4a16_triton import dot_precision

    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")  # torch's default: IEEE fp32, where tl.dot's is TF32
        assert dot_precision() == "ieee"
        torch.set_float32_matmul_precision("high")  # TF32 allowed, as torch.backends.cuda.matmul.allow_tf32 = True
        assert dot_precision() == "tf32"
    finally:
        torch.set_float32_matmul_precision(previous)
