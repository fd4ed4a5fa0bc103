"""Dense FP32 linears on CPU: nn.Linear's x @ W.T against our weight-left W @ x.T (runtime/layers/linear.py), side
by side in one run.

First each of the embedded model's matmul shapes at several row counts (best of repeats, ms, and the ratio), then
the embedded model in our engine with the weight-left form on and off: prefill of one long prompt and greedy
decode at batch 1 and batch 8 (tokens/s, ratios). About 4 minutes on 2 cores.

    python scripts/bench_dense.py [--model NAME_OR_PATH] [--rows 1 2 8 32 256 1024] [--threads 2]
"""

import time

import torch
import torch.nn.functional as F
from bench_dtype import measure, measure_parser

import runtime.layers.linear as dense

# (N, K) of Qwen2.5-0.5B: q/o projections, k/v, MLP up/gate, MLP down, the output layer.
SHAPES = [(896, 896), (128, 896), (4864, 896), (896, 4864), (151936, 896)]


def best_ms(fn, budget_s: float = 1.0) -> float:
    fn()
    times: list[float] = []
    while len(times) < 3 or (sum(times) < budget_s and len(times) < 100):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def bench_shapes(rows: list[int]) -> None:
    print(f"{'N x K':>14} {'rows':>5} {'F.linear ms':>12} {'ours ms':>9} {'speed-up':>9}")
    generator = torch.Generator().manual_seed(0)
    for n, k in SHAPES:
        weight = torch.randn(n, k, generator=generator)
        for m in rows:
            x = torch.randn(m, k, generator=generator)
            reference = best_ms(lambda x=x, w=weight: F.linear(x, w))
            ours = best_ms(lambda x=x, w=weight: dense.linear(x, w))
            print(f"{f'{n} x {k}':>14} {m:>5} {reference:>12.2f} {ours:>9.2f} {reference / ours:>8.2f}x")


def main() -> None:
    parser = measure_parser(__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 8, 32, 256, 1024])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bench_shapes(args.rows)
    default_rows = dense.SKINNY_MAX_ROWS
    results = {}
    for label, max_rows in (("F.linear", 0), ("ours", default_rows)):
        dense.SKINNY_MAX_ROWS = max_rows
        results[label] = measure(args.model, torch.float32, args.prompt_tokens, args.tokens, args.repeats)
    dense.SKINNY_MAX_ROWS = default_rows
    print(f"\n{'engine, FP32':<28} {'F.linear tok/s':>15} {'ours tok/s':>11} {'ours / F.linear':>16}")
    for key, label in (("prefill", f"prefill, {args.prompt_tokens}-token prompt"),
                       ("decode_1", f"decode, batch 1, {args.tokens} tokens"),
                       ("decode_8", f"decode, batch 8, {args.tokens} each")):
        before, after = results["F.linear"][key], results["ours"][key]
        print(f"{label:<28} {before:>15.1f} {after:>11.1f} {after / before:>15.2f}x")


if __name__ == "__main__":
    main()
