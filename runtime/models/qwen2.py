"""Qwen2 causal LM (Qwen2.5 / Qwen2.5-Coder) over flattened tokens.

Shapes: T = tokens of the step (sequences concatenated), D = hidden size, H = query heads, Hkv = key/value heads,
Dh = head dim, I = MLP intermediate size, V = vocabulary.
Parameter names equal the Hugging Face checkpoint names (`model.layers.0.self_attn.q_proj.weight`, ...).
"""

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from runtime.layers.attention import Attention
from runtime.layers.int4_linear import Int4Quantization, build_int4_linears
from runtime.layers.linear import Linear, linear
from runtime.layers.rmsnorm import RMSNorm
from runtime.layers.rotary import RotaryEmbedding, apply_rotary

DEFAULT_ROPE_THETA = 10000.0


class Qwen2ConfigError(ValueError):
    """config.json describes a Qwen2 variant this implementation does not support."""


@dataclass(frozen=True)
class Qwen2Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = DEFAULT_ROPE_THETA
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    eos_token_id: int | tuple[int, ...] | None = None
    quantization_config: Int4Quantization | None = None  # compressed-tensors INT4: those linears are Int4Linear

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise Qwen2ConfigError(
                f"hidden_size={self.hidden_size} is not a multiple of num_attention_heads={self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise Qwen2ConfigError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Qwen2Config":
        """Build from a config.json dict (transformers 4 `rope_theta` or transformers 5 `rope_parameters`)."""
        if data.get("hidden_act", "silu") != "silu":
            raise Qwen2ConfigError(f"hidden_act={data['hidden_act']!r} is not supported (only 'silu')")
        if data.get("use_sliding_window"):
            raise Qwen2ConfigError("use_sliding_window=true is not supported")
        rope = data.get("rope_parameters") or data.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise Qwen2ConfigError(f"rope_type={rope_type!r} is not supported (only 'default')")
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["rope_theta"] = float(data.get("rope_theta", rope.get("rope_theta", DEFAULT_ROPE_THETA)))
        kwargs.setdefault("num_key_value_heads", data["num_attention_heads"])
        if isinstance(kwargs.get("eos_token_id"), list):
            kwargs["eos_token_id"] = tuple(kwargs["eos_token_id"])
        if kwargs.get("quantization_config") is not None:
            kwargs["quantization_config"] = Int4Quantization.from_json(kwargs["quantization_config"])
        return cls(**kwargs)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "Qwen2Config":
        return cls.from_json(json.loads((Path(path) / "config.json").read_text()))


class Qwen2Attention(nn.Module):
    def __init__(self, config: Qwen2Config):
        super().__init__()
        heads, kv_heads, head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = Linear(config.hidden_size, heads * head_dim, bias=True)
        self.k_proj = Linear(config.hidden_size, kv_heads * head_dim, bias=True)
        self.v_proj = Linear(config.hidden_size, kv_heads * head_dim, bias=True)
        self.o_proj = Linear(heads * head_dim, config.hidden_size, bias=False)
        self.attn = Attention(heads, kv_heads, head_dim, scale=head_dim**-0.5)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x [T, D], cos/sin [T, Dh] -> [T, D]
        tokens = x.shape[0]
        q = self.q_proj(x).view(tokens, self.num_heads, self.head_dim)  # [T, H, Dh]
        k = self.k_proj(x).view(tokens, self.num_kv_heads, self.head_dim)  # [T, Hkv, Dh]
        v = self.v_proj(x).view(tokens, self.num_kv_heads, self.head_dim)  # [T, Hkv, Dh]
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = self.attn(q, k, v)  # [T, H, Dh]
        return self.o_proj(out.reshape(tokens, self.num_heads * self.head_dim))


class Qwen2MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: Qwen2Config):
        super().__init__()
        self.gate_proj = Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x [T, D] -> [T, I] -> [T, D]
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Qwen2DecoderLayer(nn.Module):
    def __init__(self, config: Qwen2Config):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Qwen2Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = Qwen2MLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x [T, D] -> [T, D]; pre-norm residual blocks
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen2Model(nn.Module):
    def __init__(self, config: Qwen2Config):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Qwen2DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # input_ids [T], positions [T] -> hidden [T, D]
        x = self.embed_tokens(input_ids)  # [T, D]
        # the tables in x's dtype once, not in every layer's apply_rotary (twice each): the same cast, the same values
        cos, sin = (table.to(x.dtype) for table in self.rotary(positions))  # [T, Dh]
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.norm(x)


class Qwen2ForCausalLM(nn.Module):
    def __init__(self, config: Qwen2Config):
        super().__init__()
        self.config = config
        self.model = Qwen2Model(config)
        # Tied checkpoints have no lm_head tensor: the embedding matrix doubles as the output layer.
        self.lm_head = None
        if not config.tie_word_embeddings:
            self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.quantization_config is not None:
            build_int4_linears(self, config.quantization_config)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # input_ids [T], positions [T] -> hidden [T, D]
        return self.model(input_ids, positions)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # hidden [T', D] -> logits [T', V] in fp32
        if self.lm_head is None:
            return linear(hidden, self.model.embed_tokens.weight).float()
        return self.lm_head(hidden).float()

    @staticmethod
    def checkpoint_name_map(config: Qwen2Config):
        """Some tied checkpoints still store `lm_head.weight`; it duplicates the embedding, so it is ignored."""

        def name_map(name: str) -> str | None:
            return None if config.tie_word_embeddings and name == "lm_head.weight" else name

        return name_map
