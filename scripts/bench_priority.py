"""What a request's priority buys under load: time to first token of one urgent request arriving into an engine whose
sequence slots are full and whose queue holds more background work, at priority 0 (served in arrival order) and at
priority -1, side by side in one run on the embedded model.

The background requests decode `--background-tokens` each (ignore_eos), `--slots` at a time; the urgent one arrives
once every slot is taken and asks for 16 tokens. Printed: the urgent request's time to first token and to
its last token in both runs, their ratios, and the background's total decode time (what the urgent one costs it).

    python scripts/bench_priority.py [--model NAME_OR_PATH] [--slots 4] [--background 12] [--background-tokens 48]
"""

import argparse
import time

from common import add_model_arguments, load_model_and_tokenizer  # beside this script

from runtime.engine import EngineConfig, LLMEngine
from runtime.sampling import SamplingParams


def run(engine: LLMEngine, background: list[list[int]], urgent: list[int], tokens: int, priority: int) -> dict:
    """Times (seconds from the urgent request's arrival) of its first and last token, and the whole run's."""
    for prompt in background:
        engine.add_request(prompt, SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True))
    start = time.perf_counter()
    while len(engine.scheduler.running) < engine.config.max_num_seqs:  # every slot taken, the rest queued
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--slots", type=int, default=4, help="the engine's max_num_seqs")
    parser.add_argument("--background", type=int, default=12, help="background requests queued before")
    parser.add_argument("--background-tokens", type=int, default=48)
    args = parser.parse_args()
    model, tokenizer = load_model_and_tokenizer(args)
    background = [tokenizer.encode_chat([{"role": "user", "content": f"Write a story about robot number {i}."}])
                  for i in range(args.background)]
    urgent = tokenizer.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    results = {}
    for priority in (0, -1):
        engine = LLMEngine(model, tokenizer, EngineConfig(kv_cache_bytes=256 << 20, max_num_seqs=args.slots))
        results[priority] = run(engine, background, urgent, args.background_tokens, priority)
    plain, urgent_run = results[0], results[-1]
    print(f"{'priority':>8}  {'first token s':>13}  {'last token s':>12}  {'whole run s':>11}")
    for priority, r in results.items():
        print(f"{priority:>8}  {r['first']:>13.2f}  {r['last']:>12.2f}  {r['total']:>11.2f}")
    print(f"priority -1 vs 0: first token {plain['first'] / urgent_run['first']:.1f}x sooner, last token "
          f"{plain['last'] / urgent_run['last']:.1f}x sooner, whole run {urgent_run['total'] / plain['total']:.2f}x")


if __name__ == "__main__":
    main()
