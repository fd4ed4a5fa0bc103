"""Quantise the embedded model's MLP weights to INT4 (round-to-nearest, group 32, symmetric; each group's scale
fits its sign: kernels.pack.quantize_int4(fit_sign=True)) into a compressed-tensors `pack-quantized` folder, then
compare BF16 and INT4 on a fixed text: perplexity and the time of one decode step (one token through every layer
plus the logits; all weights read once, no KV cache needed).

The INT4 folder loads like any checkpoint (`runtime.models.registry.load_model`, `python -m runtime generate --model
DIR`): our Qwen2 reads the quantization_config and builds runtime.layers.int4_linear.Int4Linear for the MLP
projections, which run the kernels' W4A16 dispatch (the native CPU kernel here).

    .venv/bin/python scripts/quantize.py [--model qwen2.5-coder-0.5b] [--out DIR] [--threads 2]
"""

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from kernels.pack import DEFAULT_GROUP_SIZE, pack_int4, quantize_int4
from runtime.embedded import DEFAULT_MODEL, resolve_model
from runtime.layers.int4_linear import Int4Linear
from runtime.models.registry import MODEL_TYPES, build_config, load_model
from runtime.paths import models_dir
from runtime.tokenizer import Tokenizer

DECODE_REPEATS = 10
MLP_ONLY = ("lm_head", "re:.*self_attn.*")  # quantization_config.ignore that leaves the MLP projections
# A fixed evaluation text (written for this script), long enough for a stable perplexity (~600 tokens).
TEXT = """\
A mixture-of-experts language model replaces the single feed-forward block of each transformer layer with many
smaller blocks, the experts, and a router that sends every token to only a few of them. The model therefore holds
far more parameters than it uses for any one token: the total size sets how much it can know, while the active
size sets how much each token costs to compute. Serving such a model is mostly a question of moving weights.
During decoding each step produces one token per sequence, so the arithmetic is small and the time goes into
reading the experts' weights from memory. Storing those weights in four bits instead of sixteen cuts the bytes
read per step by almost four, which is why weight-only quantisation pays off most exactly where decoding is slow.

Quantisation with groups keeps the error small. The weights of one output row are cut into groups of thirty-two
inputs, and each group gets its own scale, chosen so that the largest weight of the group maps to the edge of the
four-bit range. Every weight is then rounded to the nearest of sixteen levels. A group with one large outlier
loses precision for its other members, but the damage stays inside that group instead of spreading over the whole
row. Models trained with quantisation in the loop learn to live with this rounding; models quantised after
training, as here, usually lose a little accuracy, which perplexity on held-out text makes visible.

def moving_average(values, window):
    if window <= 0:
        raise ValueError("window must be positive")
    total, result = 0.0, []
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        if index + 1 >= window:
            result.append(total / window)
    return result

The function above keeps a running total instead of summing each window again, so it runs in linear time. The
same idea, keeping state that summarises what has been seen so far, is what a key-value cache does for attention:
the keys and values of earlier tokens are computed once and reused at every later step.
"""


def quantization_config(group_size: int, ignore: tuple[str, ...] = MLP_ONLY) -> dict:
    """compressed-tensors `pack-quantized` INT4 for every linear but those `ignore` names (module names or
    "re:" patterns)."""
    return {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "config_groups": {"group_0": {
            "targets": ["Linear"],
            "weights": {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group",
                        "group_size": group_size, "dynamic": False, "observer": "minmax"},
            "input_activations": None, "output_activations": None,
        }},
        "ignore": list(ignore),
    }


def quantize_folder(source: Path, dest: Path, group_size: int, ignore: tuple[str, ...] = MLP_ONLY) -> int:
    """Write `dest`: `source` with a quantization_config in config.json and, for every linear our model builds as
    Int4Linear from it, the weight replaced by weight_packed / weight_scale / weight_shape."""
    config = json.loads((source / "config.json").read_text())
    config["quantization_config"] = quantization_config(group_size, ignore)
    _, model_cls = MODEL_TYPES[config["model_type"]]
    with torch.device("meta"):  # only to ask the model which linears the config makes INT4
        layout = model_cls(build_config(config))
    int4_names = {name for name, module in layout.named_modules() if isinstance(module, Int4Linear)}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in load_file(str(source / "model.safetensors")).items():
        base = name.removesuffix(".weight")
        if not name.endswith(".weight") or base not in int4_names:
            out[name] = tensor
            continue
        q, scale = quantize_int4(tensor.to(torch.bfloat16), group_size, fit_sign=True)  # [N, K] int8, [N, K/G]
        out[f"{base}.weight_packed"] = pack_int4(q)  # int32 [N, K/8]
        out[f"{base}.weight_scale"] = scale
        out[f"{base}.weight_shape"] = torch.tensor(tensor.shape, dtype=torch.int64)
    staging = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging, ignore=shutil.ignore_patterns("model.safetensors"))
    save_file(out, str(staging / "model.safetensors"), metadata={"format": "pt"})
    (staging / "config.json").write_text(json.dumps(config, indent=2))
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    return len(int4_names)


@torch.inference_mode()
def perplexity(model: nn.Module, ids: torch.Tensor) -> float:
    """exp(mean next-token cross-entropy) over the whole text as one sequence."""
    hidden = model(ids, torch.arange(ids.numel()))  # [T, D]
    logits = model.compute_logits(hidden[:-1])  # [T-1, V] fp32
    return math.exp(F.cross_entropy(logits, ids[1:]).item())


@torch.inference_mode()
def decode_step_seconds(model: nn.Module, ids: torch.Tensor) -> float:
    """Best time of one decode step: one token through all layers, then its logits."""
    token, position = ids[:1], torch.zeros(1, dtype=torch.long)
    clock = time.thread_time if torch.get_num_threads() == 1 else time.perf_counter  # see --threads
    best = math.inf
    for _ in range(DECODE_REPEATS + 1):
        start = clock()
        model.compute_logits(model(token, position))
        best = min(best, clock() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="embedded model name or checkpoint folder")
    parser.add_argument("--out", type=Path, help="output folder (default: HEAVY_HOME/models/<model>-int4)")
    parser.add_argument("--group-size", type=int, default=DEFAULT_GROUP_SIZE)
    parser.add_argument("--threads", type=int, default=2,
                        help="1 times decode steps in thread CPU time (robust on a busy shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    source = resolve_model(args.model)
    dest = args.out or models_dir() / f"{source.name}-int4"
    count = quantize_folder(source, dest, args.group_size)
    print(f"quantised {count} MLP projections (RTN, group {args.group_size}) -> {dest}")
    ids = torch.tensor(Tokenizer.from_pretrained(source).encode(TEXT))
    results = {}
    for label, folder in (("bf16", source), ("int4", dest)):
        model = load_model(folder, torch.bfloat16)
        results[label] = (perplexity(model, ids), decode_step_seconds(model, ids))
        del model
    (ppl_bf16, step_bf16), (ppl_int4, step_int4) = results["bf16"], results["int4"]
    print(f"text: {ids.numel()} tokens")
    print(f"perplexity  bf16 {ppl_bf16:.3f}  int4 {ppl_int4:.3f}  ({(ppl_int4 / ppl_bf16 - 1) * 100:+.2f} %)")
    print(f"decode step bf16 {step_bf16 * 1e3:.1f} ms  int4 {step_int4 * 1e3:.1f} ms  "
          f"(int4 speed = {step_bf16 / step_int4:.2f}x bf16)")


if __name__ == "__main__":
    main()
