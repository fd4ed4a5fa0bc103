"""Report mode on recorded HotpotQA trajectories: does the report itself say the gold answer, and where.

`eval_hotpotqa.py` scores answer mode. A user of `heavy ask` reads a report: a headline answer when most trajectories
agree, findings written by one LLM pass and kept only where a fetched page holds their words, and verbatim quotes of
the fetched pages. This script rebuilds each recorded trajectory's answer and gathered pages (as
`replay_aggregation.py` does), aggregates them in report mode with the current code and the embedded model, and counts
the questions whose gold answer (normalised, as whole words; yes/no questions aside) the report writes:
- in its headline answer (with the fetched sentence shown beside it);
- in its findings (the report pass's claims that stood);
- in its quotes;
- anywhere of these three (the list of what each trajectory answered is not counted: it repeats every answer).
It also counts the findings kept and dropped. One recorded file per run; give the 1- and 8-trajectory runs in turn
to set the settings side by side.

The report is aggregated with the word check alone. `--check-claims` also aggregates it as shipped, with the model's
claim check (`heavy/aggregate/claim_check.py`, `HEAVY_CHECK_CLAIMS`): the trajectories' answers checked before the
report pass (an answer the check refutes whole is not shown to it, so the findings may differ), then the findings,
each weighed against its negation; and it puts the word check's findings to the greedy reply alone. It counts the
findings each refutes, those of them that say the gold answer, and where the shipped report still says it.

    .venv/bin/python scripts/eval_reports.py docs/eval-runs/q1-31-n8-9ba4098.json.gz --out reports.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging

from eval_hotpotqa import load_questions, read_run
from replay_aggregation import parse_recorded_args, rebuild_job, recorded_corpus

from heavy.agent.gathered import unescaped
from heavy.aggregate import AggregationConfig, aggregate
from heavy.aggregate.claim_check import check_claims
from heavy.aggregate.evidence import fetched_texts, sentences_of
from heavy.aggregate.normalize import normalize_answer, typographic_folded
from heavy.aggregate.report import FAILED_LEAD, FALLBACK_LEAD, QUOTES_LEAD
from heavy.aggregate.shorten import YES_NO
from heavy.config import Settings
from heavy.llm import make_backend

PARTS = ("answer", "findings", "quotes")


def report_parts(markdown: str) -> dict[str, str]:
    """The report's own text, split: headline answer, findings, quotes (the answer list and sources left out). The
    answer and the quotes are literal text the report escaped (`as_text`), read back as written; the findings are
    the model's Markdown, their markers kept."""
    sections = markdown.split("\n## ")
    answer = sections[0].split("**Answer:**", 1)[-1]
    findings = next((s[len("Findings"):] for s in sections[1:] if s.startswith("Findings")), "")
    claims, quotes = findings, ""
    for lead in (QUOTES_LEAD, FALLBACK_LEAD, FAILED_LEAD):
        if lead in findings:
            claims, quotes = findings.split(lead, 1)
    return {"answer": unescaped(answer), "findings": claims, "quotes": unescaped(quotes)}


def says(text: str, gold: str) -> bool:
    """Whether the text holds the gold answer as whole words (the report quotes in typographic marks)."""
    return f" {normalize_answer(gold)} " in f" {normalize_answer(typographic_folded(text))} "


async def run(args: argparse.Namespace) -> dict:
    recorded = read_run(args.recorded)
    rows = load_questions(args.data, None)
    backend = make_backend(Settings(runtime_prefix_cache=False), "runtime")
    setting = recorded["settings"][0]
    questions = setting["per_question"][args.start:][:args.limit]
    out = {"recorded": str(args.recorded), "trajectories": setting["trajectories"], "per_question": []}
    async with recorded_corpus(rows, args.corpus_port, recorded) as (executor, base):
        for number, asked in enumerate(questions, start=args.start + 1):
            job_id = f"report-{asked['id']}-n{setting['trajectories']}"
            results = await rebuild_job(asked, job_id, executor, base)
            job = await aggregate(job_id=job_id, question=asked["question"], mode="report", results=results,
                                  backend=backend, config=AggregationConfig(check_claims=False))
            parts = report_parts(job.markdown)
            gold = asked["gold"]
            found = {part: says(parts[part], gold) for part in PARTS} if normalize_answer(gold) not in YES_NO else None
            findings = sentences_of(parts["findings"])
            row = {"id": asked["id"], "gold": gold, "found": found, "findings_kept": len(findings),
                   "dropped": len(job.dropped_claims), "markdown": job.markdown}
            if args.check_claims:
                # as shipped: the answers' sentences checked before the report pass, then its findings
                shipped = await aggregate(job_id=job_id, question=asked["question"], mode="report", results=results,
                                          backend=backend, config=AggregationConfig(check_claims=True))
                checked = report_parts(shipped.markdown)
                row["checked"] = {**_check_counts(checked["findings"], shipped.refuted_claims, found, gold),
                                  "gold_anywhere": found is not None and any(says(checked[p], gold) for p in PARTS),
                                  "markdown": shipped.markdown}
                # the greedy reply alone, on the findings the word check kept (the markers number `job.sources`)
                greedy = await check_claims(parts["findings"], job.sources, fetched_texts(results), backend,
                                            prefix_key=job_id, contrast=False)
                row["checked_greedy"] = _check_counts(greedy.body, greedy.refuted, found, gold)
            out["per_question"].append(row)
            logging.info("q%d gold %r: %s, %d findings kept, %d dropped", number, gold,
                         found, len(findings), len(job.dropped_claims))
    await backend.aclose()
    return out


def _check_counts(findings: str, refuted: tuple[str, ...], found: dict | None, gold: str) -> dict:
    """What a claim check left of the findings, and what it took out ("found" None: a yes/no question)."""
    return {"findings_kept": len(sentences_of(findings)), "refuted": list(refuted),
            "gold_in_findings": found is not None and says(findings, gold),
            "gold_refuted": found is not None and any(says(r, gold) for r in refuted)}


def summary(out: dict) -> str:
    rows = out["per_question"]
    scored = [r["found"] for r in rows if r["found"] is not None]
    lines = [f"{out['trajectories']} trajectories, {len(rows)} questions ({len(scored)} not yes/no); "
             "questions whose gold answer the report writes:"]
    for part in PARTS:
        lines.append(f"  in its {part:<9} {sum(f[part] for f in scored):>3} of {len(scored)}")
    lines.append(f"  anywhere        {sum(any(f.values()) for f in scored):>3} of {len(scored)}")
    lines.append(f"findings kept {sum(r['findings_kept'] for r in rows)}, "
                 f"dropped {sum(r['dropped'] for r in rows)}")
    for key, how in (("checked", "as shipped"), ("checked_greedy", "greedy reply alone")):
        if not (checked := [r[key] for r in rows if key in r]):
            continue
        lines.append(f"with the claim check ({how}): findings kept {sum(c['findings_kept'] for c in checked)}, refuted "
                     f"{sum(len(c['refuted']) for c in checked)}; gold answer in the findings "
                     f"{sum(c['gold_in_findings'] for c in checked)} of {len(scored)}, in a refuted finding on "
                     f"{sum(c['gold_refuted'] for c in checked)}"
                     + (f"; anywhere in the report {sum(c['gold_anywhere'] for c in checked)} of {len(scored)}"
                        if all("gold_anywhere" in c for c in checked) else ""))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--start", type=int, default=0, help="skip the first N questions")
    parser.add_argument("--limit", type=int, default=None, help="N questions only")
    parser.add_argument("--check-claims", action="store_true",
                        help="also aggregate each report as shipped, with the model's claim check, and put the word "
                             "check's findings to the greedy check")
    args = parse_recorded_args(parser, "eval_reports.json")  # its first setting is measured
    out = asyncio.run(run(args))
    args.out.write_text(json.dumps(out, indent=2, ensure_ascii=False))
    print(summary(out))
    print(f"JSON result: {args.out}")


if __name__ == "__main__":
    main()
