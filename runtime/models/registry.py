"""Model classes by config.json `model_type`, and loading a checkpoint folder into the right one."""

import json
from pathlib import Path

import torch
from torch import nn

from runtime.dtypes import AUTO, has_int4_weights, resolve_dtype
from runtime.loader import load_checkpoint
from runtime.models.deepseek_v3 import DeepseekV3ForCausalLM
from runtime.models.deepseek_v3_config import DeepseekV3Config
from runtime.models.qwen2 import Qwen2Config, Qwen2ForCausalLM

# model_type -> (config class with from_json(dict), model class taking that config)
MODEL_TYPES: dict[str, tuple[type, type[nn.Module]]] = {
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "kimi_k2": (DeepseekV3Config, DeepseekV3ForCausalLM),
    "deepseek_v3": (DeepseekV3Config, DeepseekV3ForCausalLM),
}


class UnknownModelType(ValueError):
    """config.json names a model_type that no registered model class implements."""


def build_config(data: dict):
    model_type = data.get("model_type")
    if model_type not in MODEL_TYPES:
        raise UnknownModelType(
            f"config.json field model_type={model_type!r} is not supported; known: {', '.join(sorted(MODEL_TYPES))}"
        )
    config_cls, _ = MODEL_TYPES[model_type]
    return config_cls.from_json(data)


def checkpoint_dtype(path: str | Path, dtype: str | torch.dtype = AUTO, device: str | torch.device = "cpu",
                     ) -> torch.dtype:
    """The dtype the checkpoint folder `path` computes in on `device`: "auto" looks at its config.json too (INT4
    weights; runtime/dtypes.py)."""
    data = json.loads((Path(path) / "config.json").read_text())
    return resolve_dtype(dtype, device, int4_weights=has_int4_weights(data))


def load_model(path: str | Path, dtype: str | torch.dtype = AUTO, device: str | torch.device = "cpu") -> nn.Module:
    """Build the model for `path/config.json` without initialising weights, then fill it from the checkpoint.
    `dtype`: a torch dtype, "bfloat16", "float32", or "auto" (runtime/dtypes.py)."""
    path = Path(path)
    dtype = checkpoint_dtype(path, dtype, device)
    data = json.loads((path / "config.json").read_text())
    config = build_config(data)
    _, model_cls = MODEL_TYPES[data["model_type"]]
    # Meta construction skips random initialisation (seconds for real sizes); to_empty only allocates.
    with torch.device("meta"):
        model = model_cls(config)
    model = model.to(dtype).to_empty(device=device)
    name_map_factory = getattr(model_cls, "checkpoint_name_map", None)
    load_checkpoint(model, path, name_map=name_map_factory(config) if name_map_factory else None)
    return model.eval()
