"""One table over several HotpotQA result files, and how sure the gap between settings is.

A run of both settings takes about 17 min per question on 2 CPU cores, so the 49 questions are run in chunks
(`eval_hotpotqa.py --start S --limit N`) across sessions, and aggregator changes are re-measured on the recorded
trajectories (`replay_aggregation.py`). This script merges such files, keeps the questions every setting answered,
and prints per question and per setting EM/F1, then each setting's F1 gap to the first setting with a paired
bootstrap interval over questions: with a dozen questions one flipped answer moves F1 by 8 points.

Two more columns say where a setting's answers come from. `votes` is the F1 of the trajectories' own (shortened)
answers voted alone, without the judge's readings (for one trajectory: its own answer). `ceiling` is the F1 a
perfect picker would reach among every answer the job had in hand (the trajectories' answers and the readings): no
way of choosing among them can score above it, so no vote can make a setting beat another by more than its ceiling
less the other's F1.

    .venv/bin/python scripts/eval_summary.py q28.json q36.json [--first 27] [--against old-q28.json old-q36.json]

A question found in several files takes its entry from the last file given.
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from eval_hotpotqa import DEFAULT_DATA, candidate_scores, load_questions, read_run


@dataclass(frozen=True)
class Outcome:
    prediction: str
    em: float
    f1: float
    tokens: int | None  # replays record no tokens
    seconds: float | None
    votes_f1: float | None = None  # None in older files, which did not record the votes
    ceiling_f1: float | None = None


def load_outcomes(paths: list[Path]) -> dict[int, dict[str, Outcome]]:
    """Trajectories → question id → outcome, later files overriding earlier ones. Replay files (which carry
    `replayed`) give the replayed answer and keep the recorded run's tokens and wall time: the trajectories, which
    spend nearly all of both, are the recorded ones."""
    merged: dict[int, dict[str, Outcome]] = {}
    for path in paths:
        for setting in read_run(path)["settings"]:
            for row in setting["per_question"]:
                by_id = merged.setdefault(setting["trajectories"], {})
                earlier = by_id.get(row["id"])
                answer = row["replayed"] if "replayed" in row else row["prediction"]
                by_id[row["id"]] = Outcome(answer, row["em"], row["f1"],
                                           row.get("tokens", earlier.tokens if earlier else None),
                                           row.get("seconds", earlier.seconds if earlier else None),
                                           *candidate_scores(row))
    return merged


def paired_bootstrap(gaps: list[float], draws: int, seed: int) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of the mean gap over questions resampled with replacement."""
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(gaps, k=len(gaps))) / len(gaps) for _ in range(draws))
    return means[int(0.025 * draws)], means[int(0.975 * draws) - 1]


def summarise(outcomes: dict[int, dict[str, Outcome]], order: dict[str, int], draws: int = 10_000,
              seed: int = 0) -> dict:
    """Per-setting means over the questions every setting answered, and each setting's gap to the first."""
    settings = sorted(outcomes)
    shared = sorted(set.intersection(*(set(outcomes[n]) for n in settings)), key=lambda q: order.get(q, 10**9))
    rows = []
    for n in settings:
        picked = [outcomes[n][q] for q in shared]
        tokens = [o.tokens for o in picked if o.tokens is not None]
        seconds = [o.seconds for o in picked if o.seconds is not None]
        complete = all(o.ceiling_f1 is not None for o in picked) and picked
        rows.append({"trajectories": n, "questions": len(picked),
                     "votes_f1": sum(o.votes_f1 for o in picked) / len(picked) if complete else None,
                     "ceiling_f1": sum(o.ceiling_f1 for o in picked) / len(picked) if complete else None,
                     "em": sum(o.em for o in picked) / max(len(picked), 1),
                     "f1": sum(o.f1 for o in picked) / max(len(picked), 1),
                     "tokens_per_question": sum(tokens) / len(tokens) if tokens else None,
                     "seconds_per_question": sum(seconds) / len(seconds) if seconds else None})
    gaps = [{"trajectories": n, "versus": settings[0],
             **_gap([outcomes[n][q].f1 - outcomes[settings[0]][q].f1 for q in shared], draws, seed)}
            for n in settings[1:]]
    return {"questions": shared, "settings": rows, "gaps": gaps}


def _gap(diffs: list[float], draws: int, seed: int) -> dict:
    """The mean of paired F1 differences, its bootstrap interval, and how many questions moved each way."""
    return {"gap": sum(diffs) / max(len(diffs), 1),
            "ci95": paired_bootstrap(diffs, draws, seed) if diffs else (0.0, 0.0),
            "better": sum(d > 0 for d in diffs), "worse": sum(d < 0 for d in diffs)}


def compare(after: dict[int, dict[str, Outcome]], before: dict[int, dict[str, Outcome]], order: dict[str, int],
            draws: int = 10_000, seed: int = 0) -> list[dict]:
    """Each setting both runs hold, after against before (two agent versions), over the questions both answered."""
    rows = []
    for n in sorted(set(after) & set(before)):
        shared = sorted(set(after[n]) & set(before[n]), key=lambda q: order.get(q, 10**9))
        rows.append({"trajectories": n, "questions": len(shared),
                     "before": sum(before[n][q].f1 for q in shared) / max(len(shared), 1),
                     "after": sum(after[n][q].f1 for q in shared) / max(len(shared), 1),
                     **_gap([after[n][q].f1 - before[n][q].f1 for q in shared], draws, seed)})
    return rows


def print_comparison(rows: list[dict]) -> None:
    print("\nthese files against --against:")
    for row in rows:
        low, high = row["ci95"]
        print(f"n={row['trajectories']} on {row['questions']} questions: F1 {row['after']:.3f} against "
              f"{row['before']:.3f}, {100 * row['gap']:+.1f} points (95% paired bootstrap {100 * low:+.1f} .. "
              f"{100 * high:+.1f}); better on {row['better']}, worse on {row['worse']} questions")


def print_summary(summary: dict, outcomes: dict[int, dict[str, Outcome]], order: dict[str, int],
                  gold: dict[str, str]) -> None:
    settings = [row["trajectories"] for row in summary["settings"]]
    for q in summary["questions"]:
        answers = "  ".join(f"n={n}: {outcomes[n][q].prediction[:40]!r} ({outcomes[n][q].f1:.2f})" for n in settings)
        print(f"Q{order.get(q, -1) + 1:<3} gold {gold.get(q, '?')[:30]!r:<32} {answers}")
    print(f"\n{'trajectories':>12} {'questions':>9} {'EM':>6} {'F1':>6} {'votes':>6} {'ceiling':>7} {'tok/q':>8} "
          f"{'wall s/q':>9}")
    for row in summary["settings"]:
        tokens = f"{row['tokens_per_question']:,.0f}" if row["tokens_per_question"] is not None else "-"
        seconds = f"{row['seconds_per_question']:.0f}" if row["seconds_per_question"] is not None else "-"
        votes = f"{row['votes_f1']:.3f}" if row["votes_f1"] is not None else "-"
        ceiling = f"{row['ceiling_f1']:.3f}" if row["ceiling_f1"] is not None else "-"
        print(f"{row['trajectories']:>12} {row['questions']:>9} {row['em']:>6.3f} {row['f1']:>6.3f} {votes:>6} "
              f"{ceiling:>7} {tokens:>8} {seconds:>9}")
    for gap in summary["gaps"]:
        low, high = gap["ci95"]
        print(f"n={gap['trajectories']} - n={gap['versus']}: F1 {100 * gap['gap']:+.1f} points "
              f"(95% paired bootstrap {100 * low:+.1f} .. {100 * high:+.1f}); better on {gap['better']}, "
              f"worse on {gap['worse']} questions")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+", help="eval_hotpotqa.py or replay_aggregation.py JSON")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--first", type=int, default=0, help="leave out the data file's first N questions")
    parser.add_argument("--draws", type=int, default=10_000)
    parser.add_argument("--against", type=Path, nargs="+", default=[],
                        help="results of another agent version: each setting compared with it, question by question")
    args = parser.parse_args()
    missing = [str(p) for p in args.results + args.against if not p.is_file()]
    if missing:
        sys.exit(f"no such result file: {', '.join(missing)}")
    rows = load_questions(args.data, None)
    order = {row["_id"]: i for i, row in enumerate(rows)}
    outcomes = load_outcomes(args.results)
    outcomes = {n: {q: o for q, o in by_id.items() if order.get(q, 10**9) >= args.first}
                for n, by_id in outcomes.items()}
    if not outcomes:
        sys.exit("the result files hold no questions")
    summary = summarise(outcomes, order, draws=args.draws)
    print_summary(summary, outcomes, order, {row["_id"]: row["answer"] for row in rows})
    if args.against:
        print_comparison(compare(outcomes, load_outcomes(args.against), order, draws=args.draws))


if __name__ == "__main__":
    main()
