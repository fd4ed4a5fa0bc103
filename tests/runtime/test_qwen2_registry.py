"""load_model on a tiny transformers-saved Qwen2 folder, and the errors for configs we cannot build."""

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from runtime.loader import CheckpointError
from runtime.models.qwen2 import Qwen2ForCausalLM
from runtime.models.registry import UnknownModelType, load_model

TINY = dict(
    vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=128, rope_theta=1e6,
)
SEQ_LEN = 9


@pytest.fixture(params=[False, True], ids=["untied", "tied"])
def saved_tiny(request, tmp_path):
    torch.manual_seed(0)
    reference = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**TINY, tie_word_embeddings=request.param))
    reference.eval().save_pretrained(tmp_path)
    return tmp_path, reference


def test_load_model_matches_transformers(saved_tiny):
    path, reference = saved_tiny
    model = load_model(path, dtype=torch.float32)
    assert isinstance(model, Qwen2ForCausalLM)
    input_ids = torch.arange(SEQ_LEN) * 7 % TINY["vocab_size"]
    with torch.no_grad():
        expected = reference(input_ids[None]).logits[0]
        got = model.compute_logits(model(input_ids, torch.arange(SEQ_LEN)))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_load_model_casts_to_requested_dtype(saved_tiny):
    path, _ = saved_tiny
    model = load_model(path, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize(("native", "expected"), [(False, torch.float32), (True, torch.bfloat16)])
def test_by_default_a_model_loads_in_bfloat16_only_where_the_hardware_computes_it(monkeypatch, saved_tiny, native,
                                                                                  expected):
    path, _ = saved_tiny
    monkeypatch.setattr("runtime.dtypes.native_bf16", lambda device="cpu": native)
    assert {p.dtype for p in load_model(path).parameters()} == {expected}
    assert {p.dtype for p in load_model(path, "float32").parameters()} == {torch.float32}


def test_unknown_model_type_names_the_field(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba9", **TINY}))
    with pytest.raises(UnknownModelType, match="model_type='mamba9'"):
        load_model(tmp_path)


def test_missing_tensor_is_named(saved_tiny):
    path, _ = saved_tiny
    tensors = load_file(path / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        load_model(path)
