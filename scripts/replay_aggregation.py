"""Re-aggregate the trajectories of a recorded HotpotQA run with the current aggregator, without re-running them.

A full `eval_hotpotqa.py` run spends almost all its time in the trajectories (about 5 min per question for 1 + 8
trajectories on 2 CPU cores); the aggregator (shortening, vote, judge) needs a few short LLM calls. This script
rebuilds every trajectory's gathered evidence by replaying its recorded tool calls on the same corpus (a fresh
index and page server on 127.0.0.1: page ids are stable, the port is rewritten, to a fixed one, `--corpus-port`,
since the judge reads page URLs), takes its recorded answer, and aggregates again, so a change to `heavy/aggregate/`
is measured on the same trajectories in minutes.

    .venv/bin/python scripts/replay_aggregation.py eval_hotpotqa.json --out replay.json

What it cannot rebuild: the answer's confidence and citations come from the recorded `answer` call (a forced answer
gets the forced confidence and the gathered pages that contain it, as in the agent loop). Trajectories stopped by
the early stop stay as recorded, so the replay measures the aggregator only, not the trajectories.

The engine's prefix cache is off unless `--prefix-cache` is given: with it on, the same replay gave other greedy
readings depending on what the process had aggregated before (questions 42-43 alone and after 40-41); with it off,
both gave the same (docs/eval_hotpotqa.md). Two aggregator versions are compared fairly only so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from eval_hotpotqa import (
    DEFAULT_DATA,
    add_aggregation_options,
    add_corpus_port,
    aggregation_config,
    computed_dtype,
    exact_match,
    f1_score,
    load_questions,
    read_run,
    write_corpus,
)

from heavy.agent.gathered import cited_sources, keep_evidence, supporting_sources
from heavy.agent.steps import TrajectoryResult, stated_confidence
from heavy.agent.trajectory import FORCED_CONFIDENCE
from heavy.aggregate import aggregate
from heavy.config import Settings
from heavy.corpus.commands import corpus_add
from heavy.llm import make_backend
from heavy.llm.types import Usage
from heavy.toolbox import local_corpus_tools
from heavy.tools.base import Source, ToolContext, ToolExecutor

RECORDED_BASE = re.compile(r"https?://127\.0\.0\.1:\d+")
GATHERING_TOOLS = ("search", "open_page")


def _rebase(value, base: str):
    """The recorded run's corpus URLs, pointed at this run's page server."""
    if isinstance(value, str):
        return RECORDED_BASE.sub(base, value)
    if isinstance(value, list):
        return [_rebase(v, base) for v in value]
    if isinstance(value, dict):
        return {k: _rebase(v, base) for k, v in value.items()}
    return value


async def server_base(executor: ToolExecutor, query: str) -> str:
    """This run's page server, as its search results link to it."""
    ctx = ToolContext(job_id="replay-base", trajectory=0, allowed_tools=frozenset({"search"}),
                      deadline=time.monotonic() + 60)
    found = await executor.call("search", {"query": query}, ctx)
    executor.forget("replay-base")
    match = RECORDED_BASE.match(found.sources[0].url) if found.sources else None
    if match is None:
        raise RuntimeError(f"the local search returned no corpus URL: {found.text[:200]}")
    return match.group(0)


async def rebuild(transcript: dict, index: int, job_id: str, executor: ToolExecutor, base: str,
                  trajectories: int) -> TrajectoryResult:
    """One recorded trajectory of a job of `trajectories` as the aggregator saw it: its answer and everything its
    tool calls gathered."""
    evidence: dict[str, Source] = {}
    excerpts: dict[str, str] = {}
    ctx = ToolContext(job_id=job_id, trajectory=index, allowed_tools=frozenset(GATHERING_TOOLS),
                      deadline=time.monotonic() + 600, trajectories=trajectories)
    answer_calls = []
    for step in transcript["steps"]:
        for name, arguments in step["calls"]:
            arguments = _rebase(arguments, base)
            if name in GATHERING_TOOLS:
                keep_evidence(evidence, excerpts, await executor.call(name, arguments, ctx))
            elif name == "answer":
                answer_calls.append(arguments)
    answer = transcript["answer"] or ""
    given = next((a for a in reversed(answer_calls) if str(a.get("answer") or "").strip() == answer), None)
    if given is None:  # a forced answer or a best guess
        confidence, cited = (FORCED_CONFIDENCE if answer else 0.0), supporting_sources(answer, evidence, excerpts)
    else:
        confidence = stated_confidence(given)
        cited = cited_sources(given.get("sources") or [], answer, evidence, excerpts)
    return TrajectoryResult(index=index, answer=answer, confidence=confidence, stop_reason=transcript["stop"],
                            cited=cited, evidence=tuple(evidence.values()), steps=(), usage=Usage(),
                            temperature=transcript["temperature"], seed=None, excerpts=excerpts)


@asynccontextmanager
async def recorded_corpus(rows: list[dict], port: int, recorded: dict) -> AsyncIterator[tuple[ToolExecutor, str]]:
    """The corpus the recorded runs searched, indexed afresh, searched as they searched it (runs recorded before
    searches left function words out kept them) and served on loopback: its tools, and this run's page server base
    for `rebuild`."""
    with tempfile.TemporaryDirectory() as tmp:
        corpus_add(write_corpus(rows, Path(tmp)), Path(tmp) / "index.sqlite")
        with local_corpus_tools(Path(tmp) / "index.sqlite", port=port,
                                keep_function_words=recorded.get("search_keeps_function_words", True)) as executor:
            yield executor, await server_base(executor, rows[0]["question"])


async def rebuild_job(asked: dict, job_id: str, executor: ToolExecutor, base: str) -> list[TrajectoryResult]:
    """Every recorded trajectory of one question, rebuilt under `job_id` (whose cached tool calls are then
    forgotten)."""
    count = len(asked["transcripts"])
    results = [await rebuild(t, i, job_id, executor, base, count) for i, t in enumerate(asked["transcripts"])]
    executor.forget(job_id)
    return results


def parse_recorded_args(parser: argparse.ArgumentParser, out: str) -> argparse.Namespace:
    """The recorded run, --data and --out added to a script's own options, parsed, and logging set up; a missing
    recorded file ends the script with a message."""
    parser.add_argument("recorded", type=Path, help="a JSON result of scripts/eval_hotpotqa.py")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path(out))
    add_corpus_port(parser)
    args = parser.parse_args()
    if not args.recorded.is_file():
        sys.exit(f"no such file: {args.recorded}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return args


async def replay(args: argparse.Namespace) -> dict:
    recorded = read_run(args.recorded)
    rows = load_questions(args.data, None)
    settings = Settings(runtime_prefix_cache=args.prefix_cache, runtime_batch_invariant=args.batch_invariant)
    backend = make_backend(settings, "runtime")
    config = aggregation_config(args)
    out: dict = {"recorded": str(args.recorded), "prefix_cache": args.prefix_cache,
                 "batch_invariant": args.batch_invariant, "dtype": computed_dtype(settings),
                 "corpus_port": args.corpus_port,
                 "min_majority": args.min_majority, "read_on_majority": args.read_on_majority, "settings": []}
    async with recorded_corpus(rows, args.corpus_port, recorded) as (executor, base):
        for setting in recorded["settings"]:
            outcomes = []
            for number, asked in enumerate(setting["per_question"]):
                if args.questions and number + 1 not in args.questions:
                    continue
                job_id = f"replay-{asked['id']}-n{setting['trajectories']}"
                results = await rebuild_job(asked, job_id, executor, base)
                job = await aggregate(job_id=job_id, question=asked["question"], mode="answer", results=results,
                                      backend=backend, config=config)
                outcomes.append({"id": asked["id"], "gold": asked["gold"], "recorded": asked["prediction"],
                                 "replayed": job.answer, "f1_recorded": asked["f1"],
                                 "f1": f1_score(job.answer, asked["gold"]), "em": exact_match(job.answer,
                                                                                              asked["gold"]),
                                 "votes": job.votes, "reads": job.reads,
                                 "more_reads": job.more_reads})
                logging.info("n=%d q%d: recorded %r (F1 %.2f), replayed %r (F1 %.2f), gold %r",
                             setting["trajectories"], number + 1, asked["prediction"], asked["f1"], job.answer,
                             outcomes[-1]["f1"], asked["gold"])
            count = max(1, len(outcomes))
            out["settings"].append({
                "trajectories": setting["trajectories"], "questions": len(outcomes),
                "f1_recorded": sum(o["f1_recorded"] for o in outcomes) / count,
                "em": sum(o["em"] for o in outcomes) / count, "f1": sum(o["f1"] for o in outcomes) / count,
                "per_question": outcomes})
    await backend.aclose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefix-cache", action="store_true",
                        help="keep the engine's prefix cache on (faster; readings then depend on what ran before)")
    parser.add_argument("--batch-invariant", action="store_true",
                        help="the engine's batch-invariant mode: a reading does not depend on which other readings "
                             "share its batch (slower; without it a near-tie can flip from run to run)")
    parser.add_argument("--questions", type=int, nargs="+", default=None,
                        help="replay only these questions (numbers in the recorded run, from 1)")
    add_aggregation_options(parser)
    args = parse_recorded_args(parser, "replay_aggregation.json")
    result = asyncio.run(replay(args))
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print(f"{'trajectories':>12} {'questions':>9} {'F1 recorded':>11} {'EM':>6} {'F1 replayed':>11}")
    for s in result["settings"]:
        print(f"{s['trajectories']:>12} {s['questions']:>9} {s['f1_recorded']:>11.3f} {s['em']:>6.3f} {s['f1']:>11.3f}")
    print(f"JSON result: {args.out}")


if __name__ == "__main__":
    main()
