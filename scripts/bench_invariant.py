"""The batch-invariant mode's row tile, side by side in one run: what each tile height costs against the plain engine.

In that mode every linear computes fixed tiles of `EngineConfig.invariant_tile` rows
(runtime/layers/batch_invariant.py). A tall tile reads the weights once for many prompt tokens; a short one pads a
small decode batch less. For the plain engine and the mode at each tile, on the embedded model in the machine's dtype
(`auto` unless `--dtype`): prefill of one long prompt, greedy decode at batch 1 and at batch 8 (tokens/s, best of
`--repeats`), and each as a share of the plain engine's rate.

    python scripts/bench_invariant.py [--tiles 8 16 64] [--dtype auto] [--prompt-tokens 1000] [--tokens 32]
"""

import torch
from bench_dtype import measure, measure_parser

from runtime.dtypes import DTYPE_CHOICES
from runtime.embedded import resolve_model
from runtime.models.registry import checkpoint_dtype


def main() -> None:
    parser = measure_parser(__doc__)
    parser.add_argument("--tiles", type=int, nargs="+", default=[8, 16, 64])
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = checkpoint_dtype(resolve_model(args.model), args.dtype)

    def rates(**config) -> dict[str, float]:
        return measure(args.model, dtype, args.prompt_tokens, args.tokens, args.repeats, **config)

    plain = rates()
    tiled = {tile: rates(batch_invariant=True, invariant_tile=tile) for tile in args.tiles}
    print(f"{dtype}, CPU capability {torch.backends.cpu.get_cpu_capability()}, {args.threads} threads")
    print("| engine | prefill tok/s | decode batch 1 tok/s | decode batch 8 tok/s |\n|---|---|---|---|")
    print(f"| plain | {plain['prefill']:.1f} | {plain['decode_1']:.1f} | {plain['decode_8']:.1f} |")
    for tile, r in tiled.items():
        cells = " | ".join(f"{r[k]:.1f} ({r[k] / plain[k]:.2f}x)" for k in ("prefill", "decode_1", "decode_8"))
        print(f"| invariant, tile {tile} | {cells} |")


if __name__ == "__main__":
    main()
