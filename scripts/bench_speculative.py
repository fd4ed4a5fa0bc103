"""Prompt-lookup speculative decoding (runtime/engine/speculative.py) against plain decoding, side by side in one run.

The prompts are what a heavy-mode trajectory sends on the HotpotQA eval: the agent's system prompt and tools with a
question (its first step), and the same after its opening search with the search tool's real results over the
local corpus (its second step). Each is decoded up to 128 tokens by one engine per setting (BF16 by `auto` here,
the prompts prefilled before the clock starts): one request at a time (batch 1) and 8 together (batch 8), greedy and
sampled (temperature 0.7, seeded, as trajectories 1-7 sample), and greedy with a frequency penalty (its drafts checked
against rows penalized as of the drafts before them). Printed: decode tokens/s, the ratio to plain
decoding, drafts taken / checked, and how many greedy outputs are the same token for token as plain decoding's
(a checked draft attends as a decode at its position would, so they match unless a linear's rounding differs).

    .venv/bin/python scripts/bench_speculative.py            # about 15 minutes on 2 cores
    .venv/bin/python scripts/bench_speculative.py --sampling penalized --batches 1 --drafts 3 --questions 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import torch
from eval_hotpotqa import CORPUS_PORT, DEFAULT_DATA, load_questions, write_corpus

from heavy.agent import prompts
from heavy.corpus.commands import corpus_add
from heavy.llm.runtime_backend import RuntimeBackend
from heavy.toolbox import local_corpus_tools
from heavy.tools.base import ToolContext
from runtime.embedded import DEFAULT_MODEL, resolve_model
from runtime.engine import EngineConfig, LLMEngine
from runtime.engine.factory import load_tokenizer
from runtime.models.registry import load_model
from runtime.sampling import SamplingParams

TOKENS = 128
BATCH = 8
FREQUENCY_PENALTY = 0.3  # a common client setting against repetition
TOOLS = ("search", "open_page")


async def agent_prompts(rows: list[dict], encode) -> list[list[int]]:
    """Each question's first-step prompt and its second-step prompt (after the opening search), as token ids."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus_add(write_corpus(rows, Path(tmp)), Path(tmp) / "index.sqlite")
        with local_corpus_tools(Path(tmp) / "index.sqlite", port=CORPUS_PORT) as executor:
            specs = [*executor.specs(TOOLS), prompts.ANSWER_SPEC]
            for n, row in enumerate(rows):
                first = [{"role": "system", "content": prompts.SYSTEM},
                         {"role": "user", "content": prompts.QUESTION.format(question=row["question"])}]
                ctx = ToolContext(job_id=f"bench-{n}", trajectory=0, allowed_tools=frozenset(TOOLS),
                                  deadline=time.monotonic() + 60)
                found = await executor.call("search", {"query": row["question"]}, ctx)
                call = {"id": "call_0", "type": "function",
                        "function": {"name": "search", "arguments": json.dumps({"query": row["question"]})}}
                second = [*first, {"role": "assistant", "content": "", "tool_calls": [call]},
                          {"role": "tool", "tool_call_id": "call_0", "content": found.text}]
                out += [encode(first, specs), encode(second, specs)]
    return out


def decode(model, tokenizer, prompts_: list[list[int]], params: list[SamplingParams], batch: int, drafts: int):
    """Completions and decode tokens/s of one engine (prefix cache on, every prompt prefilled before the clock)."""
    engine = LLMEngine(model, tokenizer, EngineConfig(kv_cache_bytes=768 << 20, speculative_tokens=drafts))
    engine.generate(prompts_, SamplingParams(temperature=0.0, max_tokens=1))  # prefill: cached from here on
    outputs, produced, seconds = [], 0, 0.0
    for start in range(0, len(prompts_), batch):
        began = time.perf_counter()
        done = engine.generate(prompts_[start : start + batch], params[start : start + batch])
        seconds += time.perf_counter() - began
        outputs += [c.token_ids for c in done]
        produced += sum(len(c.token_ids) for c in done)
    return outputs, produced / seconds, engine.speculation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--questions", type=int, default=4, help="questions (two prompts each)")
    parser.add_argument("--drafts", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--sampling", nargs="+", choices=["greedy", "sampled", "penalized"],
                        default=["greedy", "sampled", "penalized"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, BATCH])
    args = parser.parse_args()
    torch.set_num_threads(2)
    folder = resolve_model(DEFAULT_MODEL)
    tokenizer = load_tokenizer(folder)
    model = load_model(folder, "auto")
    encode = RuntimeBackend(None, tokenizer)._prompt
    prompts_ = asyncio.run(agent_prompts(load_questions(args.data, args.questions), encode))
    print(f"{len(prompts_)} prompts of {min(map(len, prompts_))}-{max(map(len, prompts_))} tokens, "
          f"{TOKENS} tokens each, {next(model.parameters()).dtype}")
    greedy = [SamplingParams(temperature=0.0, max_tokens=TOKENS)] * len(prompts_)
    sampled = [SamplingParams(temperature=0.7, seed=i, max_tokens=TOKENS) for i in range(len(prompts_))]
    penalized = [SamplingParams(temperature=0.0, max_tokens=TOKENS,
                                frequency_penalty=FREQUENCY_PENALTY)] * len(prompts_)
    settings = {"greedy": greedy, "sampled": sampled, "penalized": penalized}
    decode(model, tokenizer, prompts_[:1], greedy[:1], 1, 3)  # warm-up: native kernels built, caches touched
    print(f"{'sampling':>8} {'batch':>5} {'drafts':>6} {'tok/s':>7} {'ratio':>6} {'taken/checked':>14} {'same':>6}")
    for name in args.sampling:
        params = settings[name]
        for batch in args.batches:
            plain, plain_rate, _ = decode(model, tokenizer, prompts_, params, batch, 0)
            print(f"{name:>8} {batch:>5} {0:>6} {plain_rate:>7.1f} {1.0:>5.2f}x {'':>14} {'':>6}")
            for drafts in args.drafts:
                outs, rate, stats = decode(model, tokenizer, prompts_, params, batch, drafts)
                matching = sum(a == b for a, b in zip(outs, plain, strict=True))
                same = f"{matching}/{len(plain)}" if params[0].greedy else ""
                print(f"{name:>8} {batch:>5} {drafts:>6} {rate:>7.1f} {rate / plain_rate:>5.2f}x "
                      f"{f'{stats.accepted}/{stats.drafted}':>14} {same:>6}")


if __name__ == "__main__":
    main()
