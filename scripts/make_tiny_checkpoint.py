"""Write a random tiny checkpoint in exactly the Kimi K2 Thinking layout (a few hundred KB).

config.json with model_type kimi_k2 and a compressed-tensors `pack-quantized` quantization_config (INT4, group 32,
symmetric); routed experts packed by the `compressed-tensors` package itself (weight_packed / weight_scale /
weight_shape), everything else BF16; optionally sharded with model.safetensors.index.json.

    python scripts/make_tiny_checkpoint.py OUT_DIR [--shards N] [--seed S]

Tests import `write_tiny_checkpoint` from this file and generate the checkpoint in a temporary folder.
"""

import argparse
import json
from pathlib import Path

import torch
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
from compressed_tensors.quantization.utils.helpers import calculate_qparams
from safetensors.torch import save_file

from runtime.tokenizers.kimi import DEFAULT_EOS, NUM_RESERVED_SPECIAL_TOKENS
from runtime.tokenizers.tiny import tiny_special_tokens, write_tiny_tokenizer

GROUP_SIZE = 32
WEIGHT_ARGS = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": GROUP_SIZE,
               "dynamic": False, "observer": "minmax"}

# Kimi K2 Thinking's config.json with every size shrunk; routing keeps its real rules (sigmoid, noaux_tc) but uses
# 4 groups / 2 kept groups so group-limited selection is exercised (Kimi itself has n_group = topk_group = 1).
TINY_CONFIG = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "model_type": "kimi_k2",
    "vocab_size": 1024,
    "hidden_size": 64,
    "intermediate_size": 128,
    "moe_intermediate_size": 32,
    "num_hidden_layers": 3,
    "first_k_dense_replace": 1,
    "moe_layer_freq": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "q_lora_rank": 48,
    "kv_lora_rank": 32,
    "qk_nope_head_dim": 16,
    "qk_rope_head_dim": 8,
    "v_head_dim": 16,
    "n_routed_experts": 16,
    "n_shared_experts": 1,
    "num_experts_per_tok": 4,
    "n_group": 4,
    "topk_group": 2,
    "norm_topk_prob": True,
    "routed_scaling_factor": 2.827,
    "scoring_func": "sigmoid",
    "topk_method": "noaux_tc",
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "rope_theta": 50000.0,
    # Kimi's shape: max_position_embeddings = factor x original (64 x 4096 = 262,144); 64 x 32 = 2,048 here, room for
    # the tests' prompts past the original context, the engine's context being at most max_position_embeddings
    "rope_scaling": {"type": "yarn", "factor": 64.0, "original_max_position_embeddings": 32, "beta_fast": 1.0,
                     "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0},
    "max_position_embeddings": 2048,
    "attention_bias": False,
    "tie_word_embeddings": False,
    "num_nextn_predict_layers": 0,
    "torch_dtype": "bfloat16",
    "initializer_range": 0.02,
    "use_cache": True,
    "quantization_config": {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": WEIGHT_ARGS,
                                      "input_activations": None, "output_activations": None}},
        "ignore": ["lm_head", "re:.*self_attn.*", "re:.*shared_experts.*", "re:.*mlp\\.(gate|up|down)_proj.*"],
        "kv_cache_scheme": None,
    },
}


def _linear(gen: torch.Generator, n_out: int, n_in: int) -> torch.Tensor:
    # std 1/sqrt(fan_in) keeps activations O(1) through the stack, so the logits are not noise-dominated.
    return (torch.randn(n_out, n_in, generator=gen) / n_in**0.5).to(torch.bfloat16)


def _norm(gen: torch.Generator, dim: int) -> torch.Tensor:
    return (1.0 + 0.1 * torch.randn(dim, generator=gen)).to(torch.bfloat16)


def quantize_expert_weight(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """BF16 [N, K] -> {weight_packed, weight_scale, weight_shape} via compressed-tensors' own observer and packer."""
    args = QuantizationArgs(**WEIGHT_ARGS)
    n, k = weight.shape
    groups = weight.float().view(n, k // GROUP_SIZE, GROUP_SIZE)  # [N, K/G, G]
    scale, _ = calculate_qparams(groups.amin(dim=-1), groups.amax(dim=-1), args)  # [N, K/G]
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    state = {"weight": weight, "weight_scale": scale.to(torch.bfloat16)}
    return PackedQuantizationCompressor.compress(state, scheme)


def tiny_tensors(config: dict, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    d, heads = config["hidden_size"], config["num_attention_heads"]
    qk_head = config["qk_nope_head_dim"] + config["qk_rope_head_dim"]
    kv_rank, rope = config["kv_lora_rank"], config["qk_rope_head_dim"]
    tensors = {
        "model.embed_tokens.weight": torch.randn(config["vocab_size"], d, generator=gen).to(torch.bfloat16),
        "model.norm.weight": _norm(gen, d),
        "lm_head.weight": _linear(gen, config["vocab_size"], d),
    }
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        tensors |= {
            p + "input_layernorm.weight": _norm(gen, d),
            p + "post_attention_layernorm.weight": _norm(gen, d),
            p + "self_attn.kv_a_proj_with_mqa.weight": _linear(gen, kv_rank + rope, d),
            p + "self_attn.kv_a_layernorm.weight": _norm(gen, kv_rank),
            p + "self_attn.kv_b_proj.weight": _linear(gen, heads * (config["qk_nope_head_dim"] + config["v_head_dim"]),
                                                      kv_rank),
            p + "self_attn.o_proj.weight": _linear(gen, d, heads * config["v_head_dim"]),
        }
        if config["q_lora_rank"] is None:
            tensors[p + "self_attn.q_proj.weight"] = _linear(gen, heads * qk_head, d)
        else:
            tensors |= {
                p + "self_attn.q_a_proj.weight": _linear(gen, config["q_lora_rank"], d),
                p + "self_attn.q_a_layernorm.weight": _norm(gen, config["q_lora_rank"]),
                p + "self_attn.q_b_proj.weight": _linear(gen, heads * qk_head, config["q_lora_rank"]),
            }
        if layer < config["first_k_dense_replace"]:
            tensors |= _mlp(gen, p + "mlp.", d, config["intermediate_size"])
            continue
        inter, experts = config["moe_intermediate_size"], config["n_routed_experts"]
        tensors |= _mlp(gen, p + "mlp.shared_experts.", d, inter * config["n_shared_experts"])
        tensors[p + "mlp.gate.weight"] = _linear(gen, experts, d)
        # fp32 like the release; large enough to change which experts win, as in the trained model.
        tensors[p + "mlp.gate.e_score_correction_bias"] = 0.1 * torch.randn(experts, generator=gen)
        for e in range(experts):
            for name, dense in _mlp(gen, f"{p}mlp.experts.{e}.", d, inter).items():
                prefix = name.removesuffix("weight")
                tensors |= {prefix + key: t for key, t in quantize_expert_weight(dense).items()}
    return tensors


def _mlp(gen: torch.Generator, prefix: str, d: int, inter: int) -> dict[str, torch.Tensor]:
    return {prefix + "gate_proj.weight": _linear(gen, inter, d), prefix + "up_proj.weight": _linear(gen, inter, d),
            prefix + "down_proj.weight": _linear(gen, d, inter)}


def write_tiny_checkpoint(out_dir: Path | str, *, seed: int = 0, shards: int = 1,
                          config_overrides: dict | None = None) -> Path:
    """Write config.json, the tokenizer files and the safetensors file(s) into out_dir; returns out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = TINY_CONFIG | (config_overrides or {})
    write_tiny_tokenizer(out, config["vocab_size"])
    special = tiny_special_tokens(config["vocab_size"] - NUM_RESERVED_SPECIAL_TOKENS)
    config |= {"bos_token_id": special["[BOS]"], "eos_token_id": special[DEFAULT_EOS]}
    tensors = tiny_tensors(config, seed)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    if shards == 1:
        save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
        return out
    names = sorted(tensors)
    weight_map = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {name: tensors[name] for name in names[i::shards]}
        save_file(part, out / file, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, file)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = write_tiny_checkpoint(args.out_dir, seed=args.seed, shards=args.shards)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
