"""A decode step's time outside the native kernels (Python, torch's small ops, the engine's bookkeeping) on the
embedded model, at batch 1 and batch 8 after ~1,500-token prompts, and the whole step's; and, side by side in one
run, the speculative drafts' lookup (speculative.propose, once per step for each drafting sequence) against the
every-window search it replaced, at contexts of 1,500 and 6,000 tokens.

On a shared machine wall-clock times say more about the neighbours than about the code, so everything runs on one
thread and is timed in that thread's CPU time. The native kernels' calls (kernels/bf16_skinny.py,
kernels/paged_attention.py) are timed apart by wrapping them; what is left is the overhead this script tracks.
Compare two versions of the code by running this script against each checkout (it prints which `runtime` it
imported; without PYTHONPATH it is the one the venv installed):

    PYTHONPATH=OLD_CHECKOUT python scripts/bench_step_overhead.py; PYTHONPATH=. python scripts/bench_step_overhead.py

    python scripts/bench_step_overhead.py [--model NAME_OR_PATH] [--steps 30] [--context 1500]
"""

import argparse
import statistics
import time
from collections import Counter

import numpy as np
import torch

import runtime
from kernels.bf16_skinny import native_bf16_skinny
from kernels.paged_attention import native_paged_attention
from runtime.embedded import DEFAULT_MODEL
from runtime.engine import EngineConfig
from runtime.engine.factory import load_engine
from runtime.engine.speculative import NGRAM_MAX, NGRAM_MIN, propose
from runtime.sampling import SamplingParams

clock = time.thread_time
PAGE = " ".join(f"Paragraph {i}: the committee reviewed item {i} and approved it." for i in range(300))


def time_native_calls(spent: Counter) -> None:
    """Wrap each native kernel's entry point so its calls add their time to `spent` (the library objects are cached,
    so every caller gets the wrapped ones)."""
    for name, library, function in (("linears", native_bf16_skinny(), "heavy_bf16_skinny_gemm"),
                                    ("attention", native_paged_attention(), "heavy_paged_decode_attention")):
        if library is None:
            continue
        native = getattr(library, function)

        def timed(*args, native=native, name=name):
            start = clock()
            native(*args)
            spent[name] += clock() - start

        setattr(library, function, timed)


def propose_every_window(token_ids: list[int], k: int) -> list[int]:
    """The lookup before: every earlier window of the context compared with the last n tokens, for each n."""
    ids = np.asarray(token_ids, dtype=np.int64)  # [L]
    for n in range(min(NGRAM_MAX, len(ids) - 1), NGRAM_MIN - 1, -1):
        windows = np.lib.stride_tricks.sliding_window_view(ids[:-1], n)  # [L - n, n]
        starts = np.flatnonzero((windows == ids[-n:]).all(axis=1))
        if starts.size:
            return ids[int(starts[-1]) + n : int(starts[-1]) + n + k].tolist()
    return []


def bench_propose() -> None:
    """Both lookups on random contexts over the model's vocabulary, ending in a fresh n-gram (every n is tried, the
    usual case mid-answer), then in one that occurred before."""
    generator = torch.Generator().manual_seed(0)
    print(f"\n{'propose, context':>18} {'every window us':>16} {'propose us':>11} {'speed-up':>9}")
    for length in (1500, 6000):
        context = torch.randint(0, 151_000, (length,), generator=generator).tolist()
        for label, token_ids in (("fresh", [*context, 151_001, 151_002]), ("repeated", [*context, *context[100:104]])):
            assert propose(token_ids, 3) == propose_every_window(token_ids, 3)
            before, after = (min(_seconds(lambda f=f, ids=token_ids: f(ids, 3)) for _ in range(5)) * 1e6
                             for f in (propose_every_window, propose))
            print(f"{f'{length} {label}':>18} {before:>16.0f} {after:>11.0f} {before / after:>8.1f}x")


def _seconds(run, repeats: int = 200) -> float:
    start = clock()
    for _ in range(repeats):
        run()
    return (clock() - start) / repeats


def step_times(model: str, batch: int, context: int, steps: int, spent: Counter) -> list[tuple[float, float]]:
    """(step ms, native kernels' ms) of each of `steps` decode steps of `batch` sequences, greedy."""
    engine = load_engine(model, EngineConfig(kv_cache_bytes=256 << 20))
    page = engine.tokenizer.encode(PAGE)[:context]
    params = SamplingParams(temperature=0.0, max_tokens=steps * 5, ignore_eos=True)
    for i in range(batch):
        engine.add_request(page + engine.tokenizer.encode(f" Question {i}: summarise paragraph {i}."), params)
    while engine.scheduler.waiting or any(s.num_completion_tokens == 0 for s in engine.scheduler.running):
        engine.step()
    for _ in range(3):  # warm-up
        engine.step()
    times = []
    for _ in range(steps):
        spent.clear()
        start = clock()
        engine.step()
        times.append((1e3 * (clock() - start), 1e3 * (spent["linears"] + spent["attention"])))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--context", type=int, default=1500)
    args = parser.parse_args()
    torch.set_num_threads(1)
    spent: Counter = Counter()
    time_native_calls(spent)
    print(f"runtime from {runtime.__file__}; one thread, CPU time, ms per decode step (median, and the least of "
          f"{args.steps} steps: what the neighbours' load inflates least)")
    print(f"{'batch':>5} {'step':>8} {'kernels':>8} {'outside kernels':>16} {'least outside':>14}")
    for batch in (1, 8):
        times = step_times(args.model, batch, args.context, args.steps, spent)
        step, kernels = statistics.median(t for t, _ in times), statistics.median(k for _, k in times)
        outside = [t - k for t, k in times]
        print(f"{batch:>5} {step:>8.1f} {kernels:>8.1f} {statistics.median(outside):>16.1f} {min(outside):>14.1f}")
    bench_propose()

if __name__ == "__main__":
    main()
