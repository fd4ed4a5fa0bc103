"""HotpotQA (distractor, hard) through heavy mode: 1 vs N trajectories over a local corpus served on loopback.

Builds a corpus of every paragraph of the data file (one page per paragraph, deduplicated), indexes it with
`heavy corpus`, serves it on 127.0.0.1, asks every question in answer mode with each trajectory count, and prints
EM / F1 (official HotpotQA normalisation), tokens and wall time per setting; writes a JSON result (rewritten after
every question, so a run cut short still holds a like-for-like comparison of the questions it finished).

    .venv/bin/python scripts/eval_hotpotqa.py --limit 10 --trajectories 1 8 --out eval.json
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import logging
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from heavy.agent import TrajectoryLimits
from heavy.aggregate import AggregationConfig, normalize_answer
from heavy.config import Settings
from heavy.corpus.commands import corpus_add
from heavy.llm import make_backend
from heavy.scheduler import JobSpec, Scheduler
from heavy.toolbox import local_corpus_tools

CORPUS_PORT = 8790  # fixed: the port is in the page URLs the model reads (the open_page header)

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hotpotqa-dev49.jsonl"
YES_NO = ("yes", "no", "noanswer")
SEARCH_KEEPS_FUNCTION_WORDS = False  # how the runs search (heavy.corpus.index), recorded so replays search the same


def f1_score(prediction: str, gold: str) -> float:
    """Token F1 as in the official hotpot_evaluate_v1 (yes/no/noanswer must match exactly)."""
    pred, truth = normalize_answer(prediction), normalize_answer(gold)
    if (pred in YES_NO or truth in YES_NO) and pred != truth:
        return 0.0
    common = Counter(pred.split()) & Counter(truth.split())
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred.split()), same / len(truth.split())
    return 2 * precision * recall / (precision + recall)


def candidate_scores(row: dict) -> tuple[float | None, float | None]:
    """(F1 of the trajectories' answers voted alone, F1 of the best answer the job had) for one recorded question.
    A tie among the most voted answers scores their mean F1: what a blind tie-break would score on average."""
    votes, gold = row.get("votes"), row.get("gold")
    if votes is None or gold is None:
        return None, None
    readings = [*(row.get("reads") or {}).values(), *(row.get("more_reads") or [])]
    candidates = {answer for answer in [*votes, *readings] if answer}
    ceiling = max((f1_score(answer, gold) for answer in candidates), default=0.0)
    if not votes:
        return 0.0, ceiling
    top = max(votes.values())
    tied = [answer for answer, count in votes.items() if count == top]
    return sum(f1_score(answer, gold) for answer in tied) / len(tied), ceiling


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def load_questions(path: Path, limit: int | None, start: int = 0) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()][start:]
    return rows[:limit] if limit else rows


def read_run(path: Path) -> dict:
    """A JSON result of this script or of replay_aggregation.py, gzipped (".gz", as kept in docs/eval-runs/) or not."""
    raw = path.read_bytes()
    return json.loads(gzip.decompress(raw) if path.suffix == ".gz" else raw)


def write_corpus(rows: list[dict], directory: Path) -> Path:
    """All paragraphs of all questions as JSONL pages, one per distinct title. HotpotQA's titles keep Wikipedia's
    HTML entities ("Tunnels &amp; Trolls"); they stay as they are, so that replays of recorded runs search the very
    corpus the runs searched (unescaped titles shift BM25 scores and changed a replayed reading), and the tally
    unescapes answers copied from them."""
    pages: dict[str, str] = {}
    for row in rows:
        for title, sentences in row["context"]:
            pages.setdefault(title, "".join(sentences).strip())
    path = directory / "hotpotqa.jsonl"
    path.write_text("\n".join(json.dumps({"title": t, "text": x}, ensure_ascii=False) for t, x in pages.items()))
    return path


def _ran(step) -> list:
    """The calls a step ran, as [name, arguments]: a repeated search or page is recorded as the call the loop ran in
    its place (`heavy/agent/explore.py`), so that a replay gathers what the trajectory gathered."""
    answers = [c for c in step.calls if c.name == "answer"]
    return [[c.name, c.arguments] for c in [o.call for o in step.observations] + answers]


def _transcript(trajectory) -> dict:
    """What one trajectory did, compactly: enough to see why an answer is wrong."""
    return {"answer": trajectory.answer, "stop": trajectory.stop_reason, "temperature": trajectory.temperature,
            "steps": [{"text": s.content[:200], "calls": _ran(s), "feedback": s.feedback[:100]}
                      for s in trajectory.steps]}


async def ask(scheduler: Scheduler, row: dict, base: JobSpec, trajectories: int) -> dict:
    spec = replace(base, job_id=f"hotpot-{row['_id']}-n{trajectories}", question=row["question"],
                   trajectories=trajectories)
    started = time.monotonic()
    result = await scheduler.run(spec)
    outcome = {
        "id": row["_id"], "question": row["question"], "gold": row["answer"], "prediction": result.answer,
        "em": exact_match(result.answer, row["answer"]), "f1": f1_score(result.answer, row["answer"]),
        "agreement": result.agreement, "stop_reason": result.stop_reason,
        "tokens": result.usage.total_tokens, "cached_prompt_tokens": result.usage.cached_prompt_tokens,
        "seconds": round(time.monotonic() - started, 1), "answers": [t.answer for t in result.trajectories],
        "votes": result.votes, "reads": result.reads, "more_reads": result.more_reads,
        "transcripts": [_transcript(t) for t in result.trajectories],
    }
    logging.info("n=%d %s: %r vs %r  F1=%.2f  %.0fs", trajectories, row["_id"], outcome["prediction"],
                 outcome["gold"], outcome["f1"], outcome["seconds"])
    return outcome


def summarise(per_setting: dict[int, list[dict]]) -> list[dict]:
    rows = []
    for trajectories, outcomes in per_setting.items():
        count = max(1, len(outcomes))
        scores = [candidate_scores(o) for o in outcomes]
        rows.append({
            "trajectories": trajectories, "questions": len(outcomes),
            "em": sum(o["em"] for o in outcomes) / count, "f1": sum(o["f1"] for o in outcomes) / count,
            "votes_f1": sum(voted for voted, _ in scores) / count,
            "ceiling_f1": sum(ceiling for _, ceiling in scores) / count,
            "tokens": sum(o["tokens"] for o in outcomes), "wall_s": round(sum(o["seconds"] for o in outcomes), 1),
            "per_question": outcomes,
        })
    return rows


async def evaluate(args: argparse.Namespace) -> dict:
    """Question by question, every trajectory count in turn, so an interrupted run still compares like with like;
    the JSON result is rewritten after every question."""
    questions = load_questions(args.data, args.limit, args.start)
    settings = Settings()
    backend = make_backend(settings, args.backend)
    limits = TrajectoryLimits(max_steps=args.max_steps, step_tokens=args.step_tokens, total_tokens=60_000,
                              deadline_s=args.deadline_s, context_tokens=settings.context_tokens)
    base = JobSpec(job_id="hotpot", question="placeholder", mode="answer", allowed_tools=frozenset(args.tools),
                   limits=limits, deadline_s=args.deadline_s, early_stop_k=args.early_stop_k,
                   temperature_min=0.0, temperature_max=args.temperature_max, seed=args.seed,
                   focus_searches=args.focus_searches)
    per_setting: dict[int, list[dict]] = {n: [] for n in args.trajectories}
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        report = corpus_add(write_corpus(load_questions(args.data, None), Path(tmp)), Path(tmp) / "index.sqlite")
        with local_corpus_tools(Path(tmp) / "index.sqlite", port=args.corpus_port,
                                keep_function_words=SEARCH_KEEPS_FUNCTION_WORDS) as executor:
            scheduler = Scheduler(backend, executor, aggregation=aggregation_config(args))
            for row in questions:
                for n in args.trajectories:
                    per_setting[n].append(await ask(scheduler, row, base, n))
                result = {"command": " ".join(sys.argv), "data": str(args.data), "corpus_pages": report.total,
                          "backend": args.backend, "model": settings.model,
                          "dtype": computed_dtype(settings, args.backend), "max_steps": args.max_steps,
                          "step_tokens": args.step_tokens, "min_majority": args.min_majority,
                          "read_on_majority": args.read_on_majority,
                          "focus_searches": args.focus_searches,
                          "search_keeps_function_words": SEARCH_KEEPS_FUNCTION_WORDS,  # replays search as it did
                          "settings": summarise(per_setting)}
                args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    await backend.aclose()
    return result


def computed_dtype(settings: Settings, backend: str = "runtime") -> str | None:
    """What the runtime backend computes in here (HEAVY_RUNTIME_DTYPE, "auto" by default; runs compare exactly only
    in one dtype); None for an OpenAI-compatible endpoint, whose dtype is its own."""
    if backend != "runtime":
        return None
    from runtime.embedded import resolve_model  # torch: only for the runtime backend
    from runtime.models.registry import checkpoint_dtype

    return str(checkpoint_dtype(resolve_model(settings.model), settings.runtime_dtype)).removeprefix("torch.")


def add_aggregation_options(parser: argparse.ArgumentParser) -> None:
    """The answer-mode aggregation options, shared with replay_aggregation.py; `aggregation_config` reads them."""
    parser.add_argument("--min-majority", type=int, default=AggregationConfig.min_majority,
                        help="agreeing trajectories that skip the judge; 1 lets a lone answer stand")
    parser.add_argument("--read-on-majority", action="store_true",
                        help="the judge's readings vote even when the trajectories have a majority (n > 1)")


def add_corpus_port(parser: argparse.ArgumentParser) -> None:
    """--corpus-port, shared with the replay scripts."""
    parser.add_argument("--corpus-port", type=int, default=CORPUS_PORT,
                        help="the corpus page server's port on 127.0.0.1 (0: any free one). Page URLs are in what "
                             "the judge reads, so runs compare exactly only on the same port")


def aggregation_config(args: argparse.Namespace) -> AggregationConfig:
    return AggregationConfig(min_majority=args.min_majority, read_on_majority=args.read_on_majority)


def print_table(result: dict) -> None:
    print(f"corpus pages: {result['corpus_pages']}  backend: {result['backend']}  model: {result['model']}")
    print(f"{'trajectories':>12} {'questions':>9} {'EM':>6} {'F1':>6} {'votes':>6} {'ceiling':>7} {'tokens':>10} "
          f"{'tok/q':>8} {'wall s':>8}")
    for s in result["settings"]:
        print(f"{s['trajectories']:>12} {s['questions']:>9} {s['em']:>6.3f} {s['f1']:>6.3f} {s['votes_f1']:>6.3f} "
              f"{s['ceiling_f1']:>7.3f} {s['tokens']:>10,} {s['tokens'] // max(1, s['questions']):>8,} "
              f"{s['wall_s']:>8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--start", type=int, default=0, help="skip the first N questions")
    parser.add_argument("--limit", type=int, default=None, help="N questions only")
    parser.add_argument("--trajectories", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--backend", choices=["runtime", "openai"], default="runtime")
    parser.add_argument("--tools", nargs="+", default=["search", "open_page"])
    parser.add_argument("--max-steps", type=int, default=6)
    parser.add_argument("--step-tokens", type=int, default=256)
    parser.add_argument("--deadline-s", type=float, default=1800.0)
    parser.add_argument("--early-stop-k", type=int, default=5)
    parser.add_argument("--temperature-max", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    add_aggregation_options(parser)
    add_corpus_port(parser)
    parser.add_argument("--focus-searches", action=argparse.BooleanOptionalAction, default=True,
                        help="trajectory k >= 1 also opens with a search on a named part of the question")
    parser.add_argument("--out", type=Path, default=Path("eval_hotpotqa.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = asyncio.run(evaluate(args))
    print_table(result)
    print(f"JSON result: {args.out}")


if __name__ == "__main__":
    main()
