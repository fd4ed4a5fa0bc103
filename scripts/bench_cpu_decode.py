"""FP32 decoding on a CPU, side by side in one run: nn.Linear's x @ W.T against our weight-left W @ x.T
(runtime/layers/linear.py), and SDPA over the batch padded to its longest context against attending one sequence at a
time with two matmuls (runtime/layers/attention.py).

1. each of the embedded model's matmul shapes at several row counts (best of repeats, ms, and the speed-up);
2. one decode step's attention in one layer (8 sequences, contexts of 1500-3500 tokens, the embedded model's heads);
3. the embedded model in our engine, decoding 8 sequences with contexts of `--context` tokens: before both changes,
   with the linears only, with both (tokens/s and ratios to before).
About 6 minutes on 2 cores.

    python scripts/bench_cpu_decode.py [--model NAME_OR_PATH] [--context 2500] [--tokens 32] [--threads 2]
"""

import argparse
import time

import torch
import torch.nn.functional as F

import runtime.layers.attention as attention
import runtime.layers.linear as dense
from runtime.embedded import DEFAULT_MODEL
from runtime.engine import EngineConfig
from runtime.engine.factory import load_engine
from runtime.sampling import SamplingParams

# (N, K) of Qwen2.5-0.5B: q/o projections, k/v, MLP up/gate, MLP down, the output layer.
SHAPES = [(896, 896), (128, 896), (4864, 896), (896, 4864), (151936, 896)]
ROWS = [1, 2, 8, 32, 64, 256]
HEADS, KV_HEADS, HEAD_DIM, BLOCK = 14, 2, 64, 16  # Qwen2.5-0.5B, and the engine's block size
BATCH = 8
FILLER = "The quick brown fox jumps over the lazy dog while the river runs past the old mill. "


def best_ms(fn, budget_s: float = 1.0) -> float:
    fn()
    times: list[float] = []
    while len(times) < 3 or (sum(times) < budget_s and len(times) < 100):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def bench_linears() -> None:
    print(f"{'N x K':>14} {'rows':>5} {'F.linear ms':>12} {'ours ms':>9} {'speed-up':>9}")
    generator = torch.Generator().manual_seed(0)
    for n, k in SHAPES:
        weight = torch.randn(n, k, generator=generator)
        for m in ROWS:
            x = torch.randn(m, k, generator=generator)
            reference = best_ms(lambda x=x, w=weight: F.linear(x, w))
            ours = best_ms(lambda x=x, w=weight: dense.linear(x, w))
            print(f"{f'{n} x {k}':>14} {m:>5} {reference:>12.2f} {ours:>9.2f} {reference / ours:>8.2f}x")


def bench_attention() -> None:
    generator = torch.Generator().manual_seed(0)
    lengths = tuple(torch.randint(1500, 3500, (BATCH,), generator=generator).tolist())
    longest, blocks = max(lengths), torch.randperm(8192, generator=generator)
    attn = attention.Attention(HEADS, KV_HEADS, HEAD_DIM, scale=HEAD_DIM**-0.5)
    attn.k_cache, attn.v_cache = (torch.randn(8192 * BLOCK, KV_HEADS, HEAD_DIM, generator=generator) for _ in range(2))
    per_block = -(-longest // BLOCK)
    tables = blocks[: BATCH * per_block].view(BATCH, per_block)  # [B, blocks]: each sequence's blocks, scattered
    decode_slots = (tables[:, :, None] * BLOCK + torch.arange(BLOCK)).view(BATCH, -1)[:, :longest]  # [B, L]
    q = torch.randn(BATCH, HEADS, HEAD_DIM, generator=generator)
    kv = torch.randn(BATCH, KV_HEADS, HEAD_DIM, generator=generator)
    context = attention.AttentionContext(
        slot_mapping=decode_slots[torch.arange(BATCH), torch.tensor(lengths) - 1], num_decode=BATCH,
        decode_slots=decode_slots, prefills=(), decode_lengths=lengths,
        decode_mask=(torch.arange(longest)[None, :] < torch.tensor(lengths)[:, None])[:, None, None, :])
    times = {}
    for label, dtypes in (("SDPA, padded", ()), ("ours, one by one", attention.MATMUL_DECODE_DTYPES)):
        attention.MATMUL_DECODE_DTYPES = dtypes
        with attention.attention_context(context):
            times[label] = best_ms(lambda: attn(q, kv, kv))
    print(f"\none layer's decode attention, {BATCH} sequences of {min(lengths)}-{longest} tokens:")
    for label, ms in times.items():
        print(f"  {label:<18} {ms:7.2f} ms")
    print(f"  speed-up {times['SDPA, padded'] / times['ours, one by one']:.2f}x")


def bench_engine(model: str, context: int, tokens: int) -> None:
    engine = load_engine(model, EngineConfig(), dtype=torch.float32)
    encode = engine.tokenizer.encode
    filler = encode(FILLER * (context // len(encode(FILLER)) + BATCH * 8))
    prompts = [encode(f"Document {i}:") + filler[7 * i: 7 * i + context] for i in range(BATCH)]
    engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=1))  # cached: the runs below decode
    decode = SamplingParams(temperature=0.7, max_tokens=tokens, ignore_eos=True, seed=0)
    linear_rows, attention_dtypes = dense.SKINNY_MAX_ROWS, attention.MATMUL_DECODE_DTYPES
    rates = {}
    for label, rows, dtypes in (("before", 0, ()), ("linears", linear_rows, ()),
                                ("linears + attention", linear_rows, attention_dtypes)):
        dense.SKINNY_MAX_ROWS, attention.MATMUL_DECODE_DTYPES = rows, dtypes
        seconds = best_ms(lambda: engine.generate(prompts, decode), budget_s=0) / 1e3
        rates[label] = BATCH * tokens / seconds
    dense.SKINNY_MAX_ROWS, attention.MATMUL_DECODE_DTYPES = linear_rows, attention_dtypes
    print(f"\nengine, FP32, decode of {BATCH} sequences x {tokens} tokens after {context}-token prompts:")
    for label, rate in rates.items():
        print(f"  {label:<20} {rate:6.1f} tok/s  {rate / rates['before']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--context", type=int, default=2500)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bench_linears()
    bench_attention()
    bench_engine(args.model, args.context, args.tokens)


if __name__ == "__main__":
    main()
