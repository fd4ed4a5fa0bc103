"""The DeepSeek-V3 architecture as Kimi K2 Thinking uses it: MLA attention with YaRN RoPE, a dense MLP in the first
`first_k_dense_replace` layers and sigmoid-routed MoE (INT4 experts + shared expert) after them.

Shapes: T = tokens of the step (sequences concatenated), D = hidden, V = vocab.
Parameter names equal the checkpoint's tensor names (`model.layers.3.mlp.experts.17.up_proj.weight_packed`).
"""

import re
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from runtime.layers.linear import Linear
from runtime.layers.mla import MultiHeadLatentAttention
from runtime.layers.moe import MoE, SwiGLUMLP
from runtime.layers.rmsnorm import RMSNorm
from runtime.layers.rotary_yarn import YarnRotaryEmbedding
from runtime.loader import LoadReport, load_checkpoint
from runtime.models.deepseek_v3_config import DeepseekV3Config

_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
_EXPERT = re.compile(r"^model\.layers\.\d+\.mlp\.experts\.(\d+)\.")


class DecoderLayer(nn.Module):
    def __init__(self, config: DeepseekV3Config, layer_idx: int, rotary: YarnRotaryEmbedding, absorbed_mla: bool,
                 local_experts: Iterable[int] | None):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = MultiHeadLatentAttention(config.mla_dims(), rotary, config.softmax_scale, absorbed_mla)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        if layer_idx < config.first_k_dense_replace:
            self.mlp = SwiGLUMLP(config.hidden_size, config.intermediate_size)
        else:
            self.mlp = MoE(config.moe_dims(), local_experts)

    def forward(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # hidden [T, D] -> [T, D]
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), cos, sin)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class DeepseekV3Model(nn.Module):
    def __init__(self, config: DeepseekV3Config, absorbed_mla: bool, local_experts: Iterable[int] | None):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.rotary_emb = YarnRotaryEmbedding(config.qk_rope_head_dim, config.rope_theta, config.rope_scaling,
                                              config.rope_interleave)
        experts = None if local_experts is None else sorted(set(local_experts))
        self.layers = nn.ModuleList(
            DecoderLayer(config, i, self.rotary_emb, absorbed_mla, experts) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # input_ids [T], positions [T] -> [T, D]
        hidden = self.embed_tokens(input_ids)  # [T, D]
        cos, sin = self.rotary_emb(positions)  # [T, R] each
        for layer in self.layers:
            hidden = layer(hidden, cos, sin)
        return self.norm(hidden)


class DeepseekV3ForCausalLM(nn.Module):
    """`absorbed_mla` picks the attention form (same result; absorbed caches 576 values per token and layer);
    `local_experts` builds only those routed experts (expert parallelism), the others contribute nothing."""

    def __init__(self, config: DeepseekV3Config, *, absorbed_mla: bool = True,
                 local_experts: Iterable[int] | None = None):
        super().__init__()
        self.config = config
        self.local_experts = frozenset(range(config.n_routed_experts) if local_experts is None else local_experts)
        self.model = DeepseekV3Model(config, absorbed_mla, local_experts)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # input_ids [T], positions [T] -> hidden [T, D]
        return self.model(input_ids, positions)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # hidden [T, D] -> logits [T, V] in fp32
        return self.lm_head(hidden).float()

    @staticmethod
    def checkpoint_name_map(config: DeepseekV3Config):
        """Checkpoint names are parameter names, except the multi-token-prediction layers stored after the main
        stack (and a tied lm_head), which this model does not use."""

        def name_map(ckpt_name: str) -> str | None:
            layer = _LAYER.match(ckpt_name)
            if layer and int(layer.group(1)) >= config.num_hidden_layers:
                return None
            if config.tie_word_embeddings and ckpt_name == "lm_head.weight":
                return None
            return ckpt_name

        return name_map

    def skips(self, param_name: str) -> bool:
        """True for routed experts another expert-parallel rank owns: the loader does not read them."""
        expert = _EXPERT.match(param_name)
        return bool(expert) and int(expert.group(1)) not in self.local_experts

    @classmethod
    def from_pretrained(cls, path: Path | str, dtype: torch.dtype = torch.bfloat16, *, absorbed_mla: bool = True,
                        local_experts: Iterable[int] | None = None) -> tuple["DeepseekV3ForCausalLM", LoadReport]:
        """Build in `dtype` without initialising (INT4 experts stay packed, the router's correction bias fp32),
        then load; with `local_experts`, the other experts' tensors are not read."""
        config = DeepseekV3Config.from_pretrained(path)
        with torch.device("meta"):
            model = cls(config, absorbed_mla=absorbed_mla, local_experts=local_experts)
        model = model.to(dtype).to_empty(device="cpu")
        report = load_checkpoint(model, path, name_map=cls.checkpoint_name_map(config), skip=model.skips)
        return model.eval(), report
