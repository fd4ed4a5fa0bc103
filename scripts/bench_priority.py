"""What a request's priority buys under load: time to first token of one urgent request arriving into a busy engine,
at priority 0 (served in arrival order) and at priority -1, side by side in one run on the embedded model.

Two kinds of load (`--load`):
- `slots`: the background requests decode `--background-tokens` each (ignore_eos), `--slots` at a time; the urgent
  one arrives once every slot is taken and more background work is queued;
- `prefill`: one background prompt of `--prefill-tokens` tokens, prefilled in chunks of the step's whole token
  budget; the urgent one arrives once its first chunk is computed.

The urgent request asks for 16 tokens. Printed: its time to first token and to its last token in both runs, their
ratios, and the background's total time (what the urgent one costs it).

    python scripts/bench_priority.py [--model NAME_OR_PATH] [--load slots|prefill] [--slots 4] [--background 12]
        [--background-tokens 48] [--prefill-tokens 4096]
"""

import argparse
import time
from collections.abc import Callable

from common import add_model_arguments, load_model_and_tokenizer  # beside this script

from runtime.engine import EngineConfig, LLMEngine
from runtime.sampling import SamplingParams


def run(engine: LLMEngine, background: list[list[int]], urgent: list[int], tokens: int, priority: int,
        busy: Callable[[LLMEngine], bool]) -> dict:
    """Times (seconds from the urgent request's arrival, once `busy(engine)`) of its first and last token, and the
    whole run's."""
    for prompt in background:
        engine.add_request(prompt, SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True))
    start = time.perf_counter()
    while not busy(engine):
        engine.step()
    arrived = time.perf_counter()
    urgent_id = engine.add_request(urgent, SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True,
                                                          priority=priority))
    first = last = None
    while engine.has_unfinished():
        for out in engine.step():
            if out.request_id == urgent_id:
                now = time.perf_counter() - arrived
                first = first if first is not None else now
                last = now if out.finished else last
    return {"first": first, "last": last, "total": time.perf_counter() - start}


def slots_taken(engine: LLMEngine) -> bool:
    return len(engine.scheduler.running) >= engine.config.max_num_seqs  # the rest of the background queued


def first_chunk_computed(engine: LLMEngine) -> bool:
    return any(s.num_computed_tokens > 0 for s in engine.scheduler.running)


def long_prompt(tokenizer, num_tokens: int) -> list[int]:
    """A chat prompt cut to `num_tokens`: a log to summarise, long enough to be prefilled in many chunks."""
    lines = "\n".join(f"{i}: robot {i % 17} moved from cell {i * 7 % 101} to cell {i * 13 % 101}"
                      for i in range(num_tokens // 8))
    prompt = tokenizer.encode_chat([{"role": "user", "content": f"Summarise this log.\n{lines}"}])
    assert len(prompt) >= num_tokens, f"the log gave {len(prompt)} tokens, fewer than {num_tokens}"
    return prompt[:num_tokens]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--load", choices=("slots", "prefill"), default="slots")
    parser.add_argument("--slots", type=int, default=4, help="the engine's max_num_seqs")
    parser.add_argument("--background", type=int, default=12, help="background requests queued before (slots)")
    parser.add_argument("--background-tokens", type=int, default=48)
    parser.add_argument("--prefill-tokens", type=int, default=4096, help="the background prompt's length (prefill)")
    args = parser.parse_args()
    model, tokenizer = load_model_and_tokenizer(args)
    if args.load == "slots":
        background = [tokenizer.encode_chat([{"role": "user", "content": f"Write a story about robot number {i}."}])
                      for i in range(args.background)]
        busy = slots_taken
    else:
        background, busy = [long_prompt(tokenizer, args.prefill_tokens)], first_chunk_computed
    urgent = tokenizer.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    results = {}
    for priority in (0, -1):
        engine = LLMEngine(model, tokenizer, EngineConfig(kv_cache_bytes=256 << 20, max_num_seqs=args.slots))
        results[priority] = run(engine, background, urgent, args.background_tokens, priority, busy)
    plain, urgent_run = results[0], results[-1]
    print(f"{'priority':>8}  {'first token s':>13}  {'last token s':>12}  {'whole run s':>11}")
    for priority, r in results.items():
        print(f"{priority:>8}  {r['first']:>13.2f}  {r['last']:>12.2f}  {r['total']:>11.2f}")
    print(f"priority -1 vs 0: first token {plain['first'] / urgent_run['first']:.1f}x sooner, last token "
          f"{plain['last'] / urgent_run['last']:.1f}x sooner, whole run {urgent_run['total'] / plain['total']:.2f}x")


if __name__ == "__main__":
    main()
