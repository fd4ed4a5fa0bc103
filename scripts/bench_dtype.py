"""BF16 against FP32 on this machine, side by side in one run: what `dtype="auto"` (runtime/dtypes.py) should pick.

For each dtype, the embedded model in our engine: prefill of one long prompt (tokens/s, best of `--repeats`) and
greedy decode at batch 1 and at batch 8 (tokens/s). Prints the FP32/BF16 ratios and what "auto" picks here.

    python scripts/bench_dtype.py [--model NAME_OR_PATH] [--prompt-tokens 1000] [--tokens 32] [--threads 2]
"""

import argparse
import time

import torch

from runtime.dtypes import native_bf16
from runtime.embedded import DEFAULT_MODEL, resolve_model
from runtime.engine import EngineConfig
from runtime.engine.factory import load_engine
from runtime.models.registry import checkpoint_dtype
from runtime.sampling import SamplingParams

BATCH = 8
FILLER = "The quick brown fox jumps over the lazy dog while the river runs past the old mill. "


def best_seconds(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(model: str, dtype: torch.dtype | str, prompt_tokens: int, tokens: int, repeats: int,
            **config) -> dict[str, float]:
    """Prefill and decode tokens/s of a fresh engine (`config`: EngineConfig fields beside the prefix cache, off)."""
    engine = load_engine(model, EngineConfig(enable_prefix_cache=False, **config), dtype=dtype)
    encode = engine.tokenizer.encode
    long_prompt = encode(FILLER * (prompt_tokens // len(encode(FILLER)) + 1))[:prompt_tokens]
    short = [encode(f"Question {i}: write a Python function that reverses a list.") for i in range(BATCH)]
    first_token = SamplingParams(temperature=0.0, max_tokens=1)
    decode = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
    engine.generate([short[0]], first_token)  # warm-up
    prefill_s = best_seconds(lambda: engine.generate([long_prompt], first_token), repeats)
    one_s = best_seconds(lambda: engine.generate([short[0]], decode), repeats)
    eight_s = best_seconds(lambda: engine.generate(short, decode), repeats)
    return {"prefill": prompt_tokens / prefill_s, "decode_1": tokens / one_s, "decode_8": BATCH * tokens / eight_s}


def measure_parser(description: str) -> argparse.ArgumentParser:
    """The options of `measure` and the thread count, shared with scripts/bench_invariant.py."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--prompt-tokens", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    return parser


def main() -> None:
    args = measure_parser(__doc__).parse_args()
    torch.set_num_threads(args.threads)
    rates = {dtype: measure(args.model, dtype, args.prompt_tokens, args.tokens, args.repeats)
             for dtype in (torch.bfloat16, torch.float32)}
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, native BF16: {native_bf16()}, "
          f"auto picks {checkpoint_dtype(resolve_model(args.model))}; {args.threads} threads")
    print("| measure | bfloat16 tok/s | float32 tok/s | float32 / bfloat16 |\n|---|---|---|---|")
    for name, label in (("prefill", f"prefill, {args.prompt_tokens}-token prompt"),
                        ("decode_1", f"decode, batch 1, {args.tokens} tokens"),
                        ("decode_8", f"decode, batch {BATCH}, {args.tokens} tokens each")):
        bf16, fp32 = rates[torch.bfloat16][name], rates[torch.float32][name]
        print(f"| {label} | {bf16:.1f} | {fp32:.1f} | {fp32 / bf16:.2f}x |")


if __name__ == "__main__":
    main()
