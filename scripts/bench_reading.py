"""How well the judge reads, alone and as an ensemble, with the retrieval held fixed.

The HotpotQA runs show the trajectories' search reaching both gold pages on most questions and the 0.5B model
still answering wrong, the same way in all eight trajectories. This script measures the reading on its own, side by
side in one run, on the pages a trajectory would hold after its opening searches (the question's top results, plus
one named part of the question for trajectory k >= 1, as `agent/openings.py` does):

- `one`: one greedy reading of the best 4 pages in rank order (what a one-trajectory job ended
  with until a lone trajectory's pages were read in four orders, `heavy/aggregate/judge.py`);
- `read8`: eight greedy readings as the aggregator reads them (`Judge.read_each`): the best 4 pages of all eight
  trajectories' pages, each reading in another order;
- `order8`: eight greedy readings of the one reading's 4 pages, each in another order (`judge.reading_order`).

The ensembles vote with the aggregator's own tally; a tie goes to the reading listed first (the greedy one).

    .venv/bin/python scripts/bench_reading.py --start 0 --limit 27
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import tempfile
import time
from pathlib import Path

from eval_hotpotqa import DEFAULT_DATA, f1_score, load_questions, write_corpus

from heavy.agent.openings import focus_query
from heavy.agent.steps import TrajectoryResult
from heavy.aggregate import tally
from heavy.aggregate.evidence import pooled_passages
from heavy.aggregate.judge import JUDGE_PASSAGES, Judge, reading_order
from heavy.config import Settings
from heavy.corpus.commands import corpus_add
from heavy.corpus.index import CorpusIndex
from heavy.corpus.server import doc_url
from heavy.llm import Sampling, Usage, make_backend
from heavy.tools.base import Source

RESULTS = 5  # the search tool's default
ENSEMBLE = 8
PAGES = "http://127.0.0.1:8000"


def trajectory_pages(index: CorpusIndex, question: str, k: int) -> TrajectoryResult:
    """The evidence trajectory k holds after its opening searches, as a result without an answer."""
    queries = [question] + ([focus] if (focus := focus_query(question, k)) else [])
    sources: dict[str, Source] = {}
    for query in queries:
        for hit in index.search(query, RESULTS):
            url = doc_url(PAGES, hit.doc_id)  # a name only: nothing is fetched
            digest = hashlib.sha256(hit.snippet.encode()).hexdigest()
            sources.setdefault(url, Source(url=url, title=hit.title, fetched_at=0.0, content_hash=digest,
                                           snippet=hit.snippet))
    evidence = tuple(sources.values())
    return TrajectoryResult(index=k, answer="", confidence=0.0, stop_reason="answered", cited=(), evidence=evidence,
                            steps=(), usage=Usage(), temperature=0.0, seed=k,
                            excerpts={s.url: s.snippet for s in evidence})


def voted(readings: list[str]) -> str:
    """The most read answer; on a tie, the one read first."""
    results = [TrajectoryResult(index=i, answer=r, confidence=1.0 / (1 + i), stop_reason="answered", cited=(),
                                evidence=(), steps=(), usage=Usage(), temperature=0.0, seed=i)
               for i, r in enumerate(readings)]
    groups = tally(results)
    return groups[0].answer if groups else ""


async def read_question(backend, index: CorpusIndex, row: dict, variants: list[str],
                        ) -> tuple[dict[str, list[str]], str]:
    """Each variant's readings, and how many of the gold pages the best 4 pages hold ("2/2")."""
    question = row["question"]
    trajectories = [trajectory_pages(index, question, k) for k in range(ENSEMBLE)]
    best = pooled_passages(question, trajectories[:1], k=JUDGE_PASSAGES)
    greedy = Judge(question, backend, Sampling(temperature=0.0), prefix_key=row["_id"])
    readings = {"one": [await greedy.answer(best, "one")]}
    if "read8" in variants:
        readings["read8"] = [read for _, read in await greedy.read_each(trajectories, {})]  # one per trajectory
    if "order8" in variants:
        orders = [reading_order(best, k) for k in range(ENSEMBLE)]
        readings["order8"] = list(await asyncio.gather(*(greedy.answer(order, f"order:{k}")
                                                         for k, order in enumerate(orders))))
    gold = {title for title, _ in row["supporting_facts"]}
    return readings, f"{len(gold & {p.title for p in best})}/{len(gold)}"


async def run(args: argparse.Namespace) -> None:
    rows = load_questions(args.data, args.limit, args.start)
    backend = make_backend(Settings(), "runtime")
    scores: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        corpus_add(write_corpus(load_questions(args.data, None), Path(tmp)), Path(tmp) / "index.sqlite")
        index = CorpusIndex(Path(tmp) / "index.sqlite")
        for number, row in enumerate(rows, start=args.start + 1):
            started = time.monotonic()
            readings, held = await read_question(backend, index, row, args.variants)
            line = []
            for variant, read in readings.items():
                answer = voted(read)
                scores.setdefault(variant, []).append(f1_score(answer, row["answer"]))
                line.append(f"{variant}={answer!r}")
            seconds = time.monotonic() - started
            print(f"{number:>3} gold pages read {held} gold={row['answer']!r} " + " ".join(line) + f"  {seconds:.0f}s",
                  flush=True)
    await backend.aclose()
    base = sum(scores["one"]) / len(scores["one"])
    print(f"\n{'variant':>8} {'F1':>6} {'vs one':>7}   ({len(scores['one'])} questions)")
    for variant, values in scores.items():
        mean = sum(values) / len(values)
        print(f"{variant:>8} {mean:>6.3f} {100 * (mean - base):>+7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--start", type=int, default=0, help="skip the first N questions")
    parser.add_argument("--limit", type=int, default=None, help="N questions only")
    parser.add_argument("--variants", nargs="+", choices=["read8", "order8"], default=["read8", "order8"],
                        help="ensembles read beside the one reading")
    args = parser.parse_args()
    asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
