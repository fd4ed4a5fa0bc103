"""Decoding's linears on a CPU, side by side in one run (runtime/layers/linear.py):
FP32: nn.Linear's x @ W.T against our weight-left W @ x.T;
BF16 (CPUs with AVX512-BF16): torch's BF16 GEMM against the native kernel (kernels/bf16_skinny.py).

1. each of the embedded model's matmul shapes at several row counts (best of repeats, ms, and the speed-up); the BF16
   ones cycle through copies of the weight larger than the caches, as a decode step streams its weights;
2. the embedded model in our engine, decoding 8 sequences after `--context`-token prompts with F.linear and with
   ours (tokens/s, ratio); in BF16 also one sequence.
About 8 minutes on 2 cores. Decode attention is timed in scripts/bench_cpu_attention.py. Tried there and not
kept: decoding attention one sequence at a time with two torch matmuls per KV head instead of SDPA over the batch
padded to its longest context: 1.31x faster in one layer (8 contexts of 1544-3260 tokens, 11.45 against 8.77 ms),
no faster in the engine (13.6 against 13.5 tok/s); the native paged kernel replaced both.

    python scripts/bench_cpu_decode.py [--model NAME_OR_PATH] [--context 2500] [--tokens 32] [--threads 2]
"""

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from bench_dtype import BATCH, FILLER, best_seconds
from bench_kernels import measure

import runtime.layers.linear as dense
from kernels.bf16_skinny import bf16_skinny_linear, native_bf16_skinny
from runtime.embedded import DEFAULT_MODEL
from runtime.engine import EngineConfig
from runtime.engine.factory import load_engine
from runtime.sampling import SamplingParams

# (N, K) of Qwen2.5-0.5B: q/o projections, k/v, MLP up/gate, MLP down, the output layer.
SHAPES = [(896, 896), (128, 896), (4864, 896), (896, 4864), (151936, 896)]
ROWS = [1, 2, 8, 32, 64, 256]
BF16_ROWS = [1, 2, 4, 8]
STREAMED_BYTES = 256 << 20  # BF16 weight copies cycled per timing: more than the caches hold


def bench_linears() -> None:
    print(f"{'N x K':>14} {'rows':>5} {'F.linear ms':>12} {'ours ms':>9} {'speed-up':>9}")
    generator = torch.Generator().manual_seed(0)
    for n, k in SHAPES:
        weight = torch.randn(n, k, generator=generator)
        for m in ROWS:
            x = torch.randn(m, k, generator=generator)
            reference = measure(lambda x=x, w=weight: F.linear(x, w)) * 1e3
            ours = measure(lambda x=x, w=weight: dense.linear(x, w)) * 1e3
            print(f"{f'{n} x {k}':>14} {m:>5} {reference:>12.2f} {ours:>9.2f} {reference / ours:>8.2f}x")


def bench_bf16_linears() -> None:
    if native_bf16_skinny() is None:
        print("\nBF16 kernel: not built here (it needs AVX512-BF16 and a compiler that targets it)")
        return
    print(f"\n{'BF16 N x K':>14} {'rows':>5} {'torch ms':>9} {'ours ms':>8} {'speed-up':>9} {'ours GB/s':>10}")
    generator = torch.Generator().manual_seed(0)
    for n, k in SHAPES:
        count = max(1, STREAMED_BYTES // (2 * n * k))
        copies = [torch.randn(n, k, generator=generator).bfloat16() for _ in range(count)]
        for m in BF16_ROWS:
            x = torch.randn(m, k, generator=generator).bfloat16()
            reference = measure(lambda x=x, ws=copies: [F.linear(x, w) for w in ws]) / count * 1e3
            ours = measure(lambda x=x, ws=copies: [bf16_skinny_linear(x, w) for w in ws]) / count * 1e3
            print(f"{f'{n} x {k}':>14} {m:>5} {reference:>9.3f} {ours:>8.3f} {reference / ours:>8.2f}x "
                  f"{2 * n * k / ours / 1e6:>10.1f}")


def engine_decode_rates(model: str, context: int, tokens: int, variants: dict[str, Callable[[], None]],
                        dtype: torch.dtype = torch.float32, batch: int = BATCH) -> dict[str, float]:
    """Decode tokens/s of one engine, `batch` sequences x `tokens` after `context`-token prompts (prefilled once,
    cached), under each variant: a callable that sets the module switches it compares."""
    engine = load_engine(model, EngineConfig(), dtype=dtype)
    encode = engine.tokenizer.encode
    filler = encode(FILLER * (context // len(encode(FILLER)) + BATCH * 8))
    prompts = [encode(f"Document {i}:") + filler[7 * i: 7 * i + context] for i in range(batch)]
    engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=1))  # cached: the runs below decode
    decode = SamplingParams(temperature=0.7, max_tokens=tokens, ignore_eos=True, seed=0)
    rates = {}
    for label, switch in variants.items():
        switch()
        rates[label] = batch * tokens / best_seconds(lambda: engine.generate(prompts, decode), repeats=3)
    return rates


def print_rates(title: str, rates: dict[str, float]) -> None:
    print(f"\n{title}:")
    reference = next(iter(rates.values()))
    for label, rate in rates.items():
        print(f"  {label:<12} {rate:6.1f} tok/s  {rate / reference:.2f}x")


def bench_engine(model: str, context: int, tokens: int) -> None:
    default_rows = dense.SKINNY_MAX_ROWS
    rates = engine_decode_rates(model, context, tokens, {
        "F.linear": lambda: setattr(dense, "SKINNY_MAX_ROWS", 0),
        "ours": lambda: setattr(dense, "SKINNY_MAX_ROWS", default_rows),
    })
    print_rates(f"engine, FP32, decode of {BATCH} sequences x {tokens} tokens after {context}-token prompts", rates)
    if native_bf16_skinny() is None:
        return
    kernel_rows = dense.BF16_KERNEL_MAX_ROWS
    for batch in (1, BATCH):
        rates = engine_decode_rates(model, context, tokens, {
            "torch BF16": lambda: setattr(dense, "BF16_KERNEL_MAX_ROWS", 0),
            "ours": lambda: setattr(dense, "BF16_KERNEL_MAX_ROWS", kernel_rows),
        }, dtype=torch.bfloat16, batch=batch)
        print_rates(f"engine, BF16, decode of {batch} sequence(s) x {tokens} tokens after {context}-token prompts",
                    rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--context", type=int, default=2500)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bench_linears()
    bench_bf16_linears()
    bench_engine(args.model, args.context, args.tokens)


if __name__ == "__main__":
    main()
