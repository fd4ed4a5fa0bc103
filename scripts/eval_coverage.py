"""Whether a recorded HotpotQA job had both gold pages in hand, and how its answer scored when it had (no model).

For every run file of eval_hotpotqa.py and every setting in it (1 or 8 trajectories), each job's trajectories are
rebuilt from their recorded tool calls as replay_aggregation.py does, and counted: on how many questions everything
the trajectories gathered (search results and opened pages) holds both supporting pages, on how many the judge's
pooled pages do (what its readings see), and the mean F1 of the job's answer with both pages in the pool and
without. Eight trajectories gather more than one; this says on how many more questions the answer was within reach of
a reading, and how well the job read once it was: the bound the breadth of eight trajectories sets on their gain.

    .venv/bin/python scripts/eval_coverage.py docs/eval-runs/fresh-all49-n1-39de594-bf16.json.gz --corpus-port 8795
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from eval_hotpotqa import DEFAULT_DATA, add_corpus_port, load_questions, read_run
from replay_aggregation import rebuild_job, recorded_corpus

from heavy.aggregate.evidence import fetched_texts, pooled_passages
from heavy.aggregate.judge import JUDGE_PASSAGES


async def coverage(path: Path, rows: list[dict], port: int) -> list[dict]:
    """Per setting of the run: questions, both gold pages gathered, both in the judge's pool, and the answers' F1
    with both in the pool and without."""
    gold_of = {row["_id"]: {title for title, _ in row["supporting_facts"]} for row in rows}
    run, counted = read_run(path), []
    async with recorded_corpus(rows, port, run) as (executor, base):
        for setting in run["settings"]:
            gathered = pooled = 0
            f1s: dict[bool, list[float]] = {True: [], False: []}
            for number, asked in enumerate(setting["per_question"]):
                gold = gold_of[asked["id"]]
                results = await rebuild_job(asked, f"coverage-{number}", executor, base)
                titles = {source.url: source.title for result in results for source in result.evidence}
                gathered += gold <= {titles[url] for url in fetched_texts(results)}
                pool = pooled_passages(asked["question"], results, [r.answer for r in results], k=JUDGE_PASSAGES)
                in_pool = gold <= {passage.title for passage in pool}
                pooled += in_pool
                f1s[in_pool].append(asked["f1"])
            counted.append({"run": path.name, "trajectories": setting["trajectories"],
                            "questions": len(setting["per_question"]), "gathered": gathered, "pooled": pooled,
                            "f1_pooled": _mean(f1s[True]), "f1_not_pooled": _mean(f1s[False])})
    return counted


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="JSON results of eval_hotpotqa.py")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    add_corpus_port(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = load_questions(args.data, None)
    print(f"{'run':<44} {'n':>2} {'questions':>9} {'both gathered':>13} {'both pooled':>11} "
          f"{'F1 pooled':>9} {'F1 not':>6}")
    for path in args.runs:
        for row in asyncio.run(coverage(path, rows, args.corpus_port)):
            print(f"{row['run'][:44]:<44} {row['trajectories']:>2} {row['questions']:>9} {row['gathered']:>13} "
                  f"{row['pooled']:>11} {row['f1_pooled']:>9.3f} {row['f1_not_pooled']:>6.3f}")


if __name__ == "__main__":
    main()
