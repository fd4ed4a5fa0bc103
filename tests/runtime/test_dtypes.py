"""The compute dtype: "auto" picks bfloat16 where the hardware multiplies it natively, or where the weights are INT4
and no native kernel takes FP32 activations; names are checked."""

import pytest
import torch

from kernels import cpu_native
from runtime.cli import build_parser
from runtime.dtypes import has_int4_weights, native_bf16, resolve_dtype
from runtime.replica.rank import RankSpec


def _cpu_with(monkeypatch, avx512_bf16: bool, amx: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)


@pytest.mark.parametrize(("avx512_bf16", "amx", "expected"), [
    (False, False, torch.float32), (True, False, torch.bfloat16), (False, True, torch.bfloat16)])
def test_auto_is_bfloat16_only_on_a_cpu_that_computes_it_natively(monkeypatch, avx512_bf16, amx, expected):
    _cpu_with(monkeypatch, avx512_bf16, amx)
    assert resolve_dtype("auto") is expected
    assert native_bf16("cpu") is (expected is torch.bfloat16)


@pytest.mark.parametrize(("native", "fp32_kernel", "expected"), [
    (False, False, torch.bfloat16), (False, True, torch.float32), (True, False, torch.bfloat16),
    (True, True, torch.bfloat16)])
def test_auto_for_int4_weights_is_float32_only_where_a_native_kernel_takes_it(monkeypatch, native, fp32_kernel,
                                                                              expected):
    # without that kernel, FP32 activations dequantize every INT4 weight on every call (0.07x decode at batch 1)
    _cpu_with(monkeypatch, avx512_bf16=native, amx=False)
    monkeypatch.setattr(cpu_native, "native_kernel", lambda: (cpu_native.AVX2, None) if fp32_kernel else None)
    assert resolve_dtype("auto", int4_weights=True) is expected
    assert resolve_dtype("float32", int4_weights=True) is torch.float32  # a name is taken as given
    assert has_int4_weights({"quantization_config": {"quant_method": "compressed-tensors"}})
    assert not has_int4_weights({"model_type": "qwen2"})


def test_names_and_torch_dtypes_resolve_and_unknown_names_are_refused():
    assert resolve_dtype("float32") is torch.float32 and resolve_dtype("bfloat16") is torch.bfloat16
    assert resolve_dtype(torch.float16) is torch.float16  # a torch dtype is taken as given
    with pytest.raises(ValueError, match="'float8' is not one of auto, float32, bfloat16"):
        resolve_dtype("float8")
    with pytest.raises(ValueError, match="float8"):
        RankSpec("model", ep_size=1, rank=0, dtype="float8")
    assert RankSpec("model", ep_size=1, rank=0).dtype == "auto"  # resolved on the rank's own node


def test_the_cli_takes_a_dtype_and_refuses_an_unknown_one(capsys):
    assert build_parser().parse_args(["chat", "hi"]).dtype == "auto"
    assert build_parser().parse_args(["serve", "--dtype", "float32"]).dtype == "float32"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "x", "--dtype", "float8"])
    assert "invalid choice: 'float8'" in capsys.readouterr().err
