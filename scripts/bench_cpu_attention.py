"""Attention on a CPU in FP32 and BF16, side by side in one run (the embedded model's heads: 14 query, 2 key/value,
dim 64), for each dtype:

1. decoding, one layer: torch's form (gather every context into a batch padded to the longest, SDPA) against the
   native paged kernel reading the cache in place (kernels/paged_attention.py), for 8 contexts of 1544-3260
   tokens and for one of 2500 (ms, speed-up);
2. prefill, one layer: a 512-token chunk after a cached prefix, SDPA on 3-D inputs (its unfused math path) against
   a batch of one (its flash kernel; runtime/layers/attention.py does the latter), and what the batch-invariant
   mode pays for attending each query as a decode through the native kernel (its cost against the flash kernel);
3. the engine decoding 8 sequences x `--tokens` after `--context`-token prompts with each decode form (tokens/s).
About 6 minutes on 2 cores.

    python scripts/bench_cpu_attention.py [--model NAME_OR_PATH] [--dtypes float32 bfloat16] [--context 2500]
                                          [--tokens 32] [--threads 2]
"""

import argparse

import torch
import torch.nn.functional as F
from bench_cpu_decode import engine_decode_rates, print_rates
from bench_dtype import BATCH
from bench_kernels import measure

from kernels.paged_attention import native_paged_attention, paged_decode_attention
from runtime.dtypes import DTYPES
from runtime.embedded import DEFAULT_MODEL
from runtime.layers import attention
from runtime.layers.attention import Attention, AttentionContext

HEADS, KV_HEADS, HEAD_DIM = 14, 2, 64
CONTEXTS = ([1544, 2000, 2300, 2500, 2600, 2800, 3000, 3260], [2500])
PREFIX_CONTEXTS = [1024, 2500, 4000]  # context of the chunk's last query: cached prefix + 512
CHUNK = 512
BLOCK = 16  # the engine's default block size


def decode_layer_ms(lengths: list[int], dtype: torch.dtype, generator: torch.Generator) -> tuple[float, float]:
    """One layer's decode attention for sequences of these context lengths: (torch ms, native ms)."""
    blocks = sum(lengths) // BLOCK + len(lengths)
    layer = Attention(HEADS, KV_HEADS, HEAD_DIM, HEAD_DIM**-0.5)
    layer.k_cache = torch.randn(blocks * BLOCK, KV_HEADS, HEAD_DIM, generator=generator).to(dtype)  # [S, Hkv, D]
    layer.v_cache = torch.randn(blocks * BLOCK, KV_HEADS, HEAD_DIM, generator=generator).to(dtype)
    # blocks in scattered order, as in a long-running cache; slots within a block consecutive
    order = (torch.randperm(blocks, generator=generator)[:, None] * BLOCK + torch.arange(BLOCK)).reshape(-1)
    slots = torch.zeros(len(lengths), max(lengths), dtype=torch.int64)  # [B, L]
    for row, chunk in enumerate(order[: sum(lengths)].split(lengths)):
        slots[row, : len(chunk)] = chunk
    lens = torch.tensor(lengths)
    q = torch.randn(len(lengths), HEADS, HEAD_DIM, generator=generator).to(dtype)  # [B, H, D]
    context = AttentionContext(
        slot_mapping=torch.zeros(0, dtype=torch.int64), num_decode=len(lengths), decode_slots=slots,
        prefills=(), decode_lengths=lens)
    attention.NATIVE_DECODE = False
    reference = measure(lambda: layer._decode(q, context)) * 1e3
    attention.NATIVE_DECODE = True
    native = measure(lambda: paged_decode_attention(q, layer.k_cache, layer.v_cache, slots, lens, layer.scale)) * 1e3
    return reference, native


def prefill_layer_ms(length: int, dtype: torch.dtype, generator: torch.Generator) -> tuple[float, float, float]:
    """One layer's attention for a 512-token chunk whose last query sees `length` keys: (3-D ms, batch-of-1 ms,
    per-query native ms)."""
    q = torch.randn(HEADS, CHUNK, HEAD_DIM, generator=generator).to(dtype)  # [H, N, D]
    k, v = (torch.randn(KV_HEADS, length, HEAD_DIM, generator=generator).to(dtype) for _ in range(2))  # [Hkv, C, D]
    mask = torch.ones(CHUNK, length, dtype=torch.bool).tril(diagonal=length - CHUNK)  # [N, C]
    unfused = measure(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)) * 1e3
    flash = measure(lambda: F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask,
                                                           enable_gqa=True)) * 1e3
    k_cache, v_cache = (x.transpose(0, 1).contiguous() for x in (k, v))  # [C, Hkv, D]
    slots = torch.arange(length).expand(CHUNK, length)  # [N, C], one shared row
    lengths = torch.arange(length - CHUNK + 1, length + 1)  # [N]
    queries = q.transpose(0, 1).contiguous()  # [N, H, D]
    as_decodes = measure(lambda: paged_decode_attention(queries, k_cache, v_cache, slots, lengths, HEAD_DIM**-0.5))
    return unfused, flash, as_decodes * 1e3


def bench_layers(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(0)
    print(f"\n{str(dtype).removeprefix('torch.')}\n{'decode, contexts':>28} {'torch ms':>9} {'native ms':>10}"
          f" {'speed-up':>9}")
    for lengths in CONTEXTS:
        reference, native = decode_layer_ms(lengths, dtype, generator)
        label = f"{len(lengths)} of {min(lengths)}-{max(lengths)}" if len(lengths) > 1 else f"1 of {lengths[0]}"
        print(f"{label:>28} {reference:>9.2f} {native:>10.2f} {reference / native:>8.2f}x")
    print(f"\n{'prefill chunk of 512, context':>28} {'3-D ms':>9} {'batch of 1':>10} {'speed-up':>9}"
          f" {'invariant ms':>13} {'its cost':>9}")
    for length in PREFIX_CONTEXTS:
        unfused, flash, as_decodes = prefill_layer_ms(length, dtype, generator)
        print(f"{length:>28} {unfused:>9.2f} {flash:>10.2f} {unfused / flash:>8.2f}x {as_decodes:>13.2f}"
              f" {as_decodes / flash:>8.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--context", type=int, default=2500)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if native_paged_attention() is None:
        raise SystemExit("the native paged attention kernel does not build or run here (needs AVX2 + FMA and c++)")
    dtypes = [DTYPES[name] for name in args.dtypes]
    for dtype in dtypes:
        bench_layers(dtype)
    for name, dtype in zip(args.dtypes, dtypes, strict=True):
        rates = engine_decode_rates(args.model, args.context, args.tokens, {
            "torch": lambda: setattr(attention, "NATIVE_DECODE", False),
            "native": lambda: setattr(attention, "NATIVE_DECODE", True),
        }, dtype)
        print_rates(f"engine, {name}, decode of {BATCH} sequences x {args.tokens} tokens after {args.context}-token "
                    "prompts", rates)


if __name__ == "__main__":
    main()
