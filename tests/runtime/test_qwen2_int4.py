"""An INT4 Qwen2 folder (scripts/quantize.py: compressed-tensors `pack-quantized` config.json + packed tensors)
loads through the registry with Int4Linear built from its quantization_config.

References, on a tiny random Qwen2 saved by transformers:
- the module-swapped model (our Qwen2 built dense, projections replaced by Int4Linear by hand, then loaded), as
  scripts/quantize.py used to build it: the same kernels on the same tensors, so the logits are identical;
- transformers' Qwen2ForCausalLM with the quantized weights dequantised: fp32, only the op order differs.
"""

import importlib.util
import json
import subprocess
import sys

import pytest
import torch
import transformers
from safetensors.torch import load_file

from kernels import cpu_native
from kernels.pack import dequantize_int4
from runtime.dtypes import fp32_int4_kernel, native_bf16
from runtime.layers.int4_linear import Int4Linear, QuantizationConfigError
from runtime.loader import load_checkpoint
from runtime.models.qwen2 import Qwen2Config, Qwen2ForCausalLM
from runtime.models.registry import load_model
from tests.conftest import REPO_ROOT

TINY = dict(
    vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=128, rope_theta=1e6,
)
GROUP_SIZE = 32
SEQ_LEN = 9
SAME_KERNELS_TOL = dict(atol=0.0, rtol=0.0)
DEQUANTISED_FP32_TOL = dict(atol=1e-5, rtol=1e-5)
MLP_PROJECTIONS = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
ATTENTION_PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")


def _quantize_script():
    spec = importlib.util.spec_from_file_location("quantize_script", REPO_ROOT / "scripts/quantize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quantize_script():
    return _quantize_script()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny random Qwen2 saved by transformers (fp32, untied lm_head, random biases)."""
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**TINY, tie_word_embeddings=False)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(std=0.2)
    path = tmp_path_factory.mktemp("qwen2_tiny")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=["mlp_only", "every_linear"])
def quantized(request, source, tmp_path_factory, quantize_script):
    """(folder, names of the linears made INT4) for the script's default ignore list, or an empty one."""
    mlp_only = request.param == "mlp_only"
    dest = tmp_path_factory.mktemp("qwen2_tiny_int4") / "int4"
    count = quantize_script.quantize_folder(source, dest, GROUP_SIZE, quantize_script.MLP_ONLY if mlp_only else ())
    projections = MLP_PROJECTIONS if mlp_only else (*MLP_PROJECTIONS, *ATTENTION_PROJECTIONS)
    names = {f"model.layers.{i}.{p}" for i in range(TINY["num_hidden_layers"]) for p in projections}
    expected = names if mlp_only else names | {"lm_head"}
    assert count == len(expected)
    return dest, expected


def _module_swapped(folder, dtype: torch.dtype) -> Qwen2ForCausalLM:
    """The pre-config way: build dense, swap every quantized projection for an Int4Linear, load."""
    data = json.loads((folder / "config.json").read_text())
    config = Qwen2Config.from_json({k: v for k, v in data.items() if k != "quantization_config"})
    int4 = {name.removesuffix(".weight_packed") for name in load_file(folder / "model.safetensors")
            if name.endswith(".weight_packed")}
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
        for name in int4:
            parent, _, child = name.rpartition(".")
            linear = model.get_submodule(name)
            setattr(model.get_submodule(parent), child, Int4Linear(linear.in_features, linear.out_features,
                                                                   GROUP_SIZE, bias=linear.bias is not None))
    model = model.to(dtype).to_empty(device="cpu")
    load_checkpoint(model, folder, name_map=Qwen2ForCausalLM.checkpoint_name_map(config))
    return model.eval()


def _transformers_dequantised(source, folder) -> transformers.Qwen2ForCausalLM:
    model = transformers.Qwen2ForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    tensors = load_file(folder / "model.safetensors")
    with torch.no_grad():
        for name in (n.removesuffix(".weight_packed") for n in tensors if n.endswith(".weight_packed")):
            weight = dequantize_int4(tensors[f"{name}.weight_packed"], tensors[f"{name}.weight_scale"], GROUP_SIZE,
                                     dtype=torch.float32)  # [N, K]
            model.get_submodule(name).weight.copy_(weight)
    return model


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.compute_logits(model(ids, torch.arange(ids.numel())))  # [T, V] fp32


def _ids() -> torch.Tensor:
    return torch.randint(0, TINY["vocab_size"], (SEQ_LEN,), generator=torch.Generator().manual_seed(1))


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, **tol) -> None:
    err = (actual - expected).abs()
    torch.testing.assert_close(actual, expected, **tol,
                               msg=lambda m: f"{m}\nmax abs err {err.max():.3g}, mean {err.mean():.3g}")


def test_the_config_decides_which_linears_are_int4(quantized):
    folder, expected = quantized
    model = load_model(folder, torch.bfloat16)
    modules = dict(model.named_modules())
    assert {name for name, module in modules.items() if isinstance(module, Int4Linear)} == expected
    q_proj = modules["model.layers.0.self_attn.q_proj"]
    assert q_proj.bias is not None and q_proj.bias.abs().sum() > 0  # quantized or not, q/k/v keep their biases


def test_auto_loads_int4_weights_in_bfloat16_without_bf16_in_hardware_only_if_no_kernel_takes_fp32(
        source, quantized, monkeypatch):
    # without a native FP32 kernel, FP32 activations dequantize every INT4 weight on every call (0.07x decode)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False, raising=False)
    folder, _ = quantized
    assert load_model(source).model.embed_tokens.weight.dtype is torch.float32  # the dense original
    if fp32_int4_kernel():  # AVX2: its layers then run on that kernel
        model = load_model(folder)
        assert model.model.embed_tokens.weight.dtype is torch.float32
        assert model.model.layers[0].mlp.gate_proj._prepared().cpu.kind == "native"
    monkeypatch.setattr(cpu_native, "native_kernel", lambda: None)
    assert load_model(folder).model.embed_tokens.weight.dtype is torch.bfloat16


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_registry_load_equals_the_module_swapped_model(quantized, dtype):
    folder, _ = quantized
    ids = _ids()
    _assert_close(_logits(load_model(folder, dtype), ids), _logits(_module_swapped(folder, dtype), ids),
                  **SAME_KERNELS_TOL)


def test_fp32_logits_match_transformers_on_the_dequantised_weights(source, quantized):
    folder, _ = quantized
    ids = _ids()
    with torch.no_grad():
        expected = _transformers_dequantised(source, folder)(ids[None]).logits[0]  # [T, V]
    _assert_close(_logits(load_model(folder, torch.float32), ids), expected, **DEQUANTISED_FP32_TOL)


def _quant_config(**overrides) -> dict:
    config = _quantize_script().quantization_config(GROUP_SIZE)
    group = config["config_groups"]["group_0"]
    for path, value in overrides.items():
        *parents, leaf = path.split(".")
        target = {"group": group, "weights": group["weights"]}[parents[0]] if parents else config
        target[leaf] = value
    return config


@pytest.mark.parametrize(
    "config, field",
    [
        (_quant_config(quant_method="gptq"), "quantization_config.quant_method"),
        (_quant_config(format="float-quantized"), "quantization_config.format"),
        (_quant_config(quantization_status="frozen"), "quantization_config.quantization_status"),
        (_quant_config(config_groups={}), "quantization_config.config_groups"),
        (_quant_config(**{"weights.num_bits": 8}), "config_groups.group_0.weights.num_bits"),
        (_quant_config(**{"weights.symmetric": False}), "config_groups.group_0.weights.symmetric"),
        (_quant_config(**{"weights.strategy": "channel"}), "config_groups.group_0.weights.strategy"),
        (_quant_config(**{"weights.actorder": "group"}), "config_groups.group_0.weights.actorder"),
        (_quant_config(**{"weights.group_size": 12}), "config_groups.group_0.weights.group_size"),
        (_quant_config(**{"group.input_activations": {"num_bits": 8}}), "config_groups.group_0.input_activations"),
        (_quant_config(**{"group.targets": ["re:.*mlp\\.experts.*"]}), "targets none"),
        (_quant_config(**{"weights.group_size": 128}), "group_size=128"),  # 64 inputs: not a multiple of 128
        ("int4", "quantization_config must be an object"),
    ],
)
def test_unsupported_quantization_config_is_rejected_naming_the_field(tmp_path, config, field):
    (tmp_path / "config.json").write_text(json.dumps(dict(TINY, model_type="qwen2", quantization_config=config)))
    with pytest.raises(QuantizationConfigError, match=field.replace(".", r"\.")):
        load_model(tmp_path)


@pytest.mark.slow
def test_cli_generates_from_the_int4_embedded_model(embedded_model_dir, tmp_path, quantize_script):
    dest = tmp_path / "int4"
    quantize_script.quantize_folder(embedded_model_dir, dest, GROUP_SIZE)
    result = subprocess.run([sys.executable, "-m", "runtime", "generate", "--model", str(dest), "--max-tokens", "8",
                             "def fibonacci(n):"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() and "tokens/s" in result.stderr
    # "auto": FP32 only on a CPU without BF16 hardware whose native INT4 kernel takes FP32 activations (AVX2)
    expected = "float32" if not native_bf16() and fp32_int4_kernel() else "bfloat16"
    assert f"loaded {dest} in {expected}" in result.stderr
