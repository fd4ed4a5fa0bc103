"""The word check as it is now, run again on the findings recorded reports kept: which would it drop?

No model. Each finding of the recorded report-mode runs (`eval_reports.py` output, `docs/eval-runs/reports-*`) is
put through `filter_claims` again, alone, with its cited sources' text taken from the HotpotQA paragraphs of the
same title (the eval's corpus serves those paragraphs as its pages) and the question it answered. A finding the check
drops now, or cuts to the whole sentences copied between an excerpt's "…", is printed with its gold answer, to read
whether it was right; the counts end the output. Findings are
counted once however many runs kept them.

    .venv/bin/python scripts/recheck_findings.py docs/eval-runs/reports-*.json.gz
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from eval_hotpotqa import DEFAULT_DATA, load_questions, read_run  # the eval's questions, beside this script
from eval_reports import report_parts

from heavy.aggregate.citations import filter_claims
from heavy.aggregate.evidence import SENTENCE_END
from heavy.tools.base import Source

_SOURCE_LINE = re.compile(r"^\d+\. \[(.*?)\]\((\S+?)\)", re.MULTILINE)


def findings(markdown: str) -> list[str]:
    """The sentences of a report's findings that cite a source (the quotes after them left out)."""
    lines = report_parts(markdown)["findings"].splitlines()
    return [s.strip() for line in lines for s in SENTENCE_END.split(line.lstrip("-* ")) if re.search(r"\[\d+\]", s)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", help="eval_reports.py results (.json or .json.gz)")
    parser.add_argument("--data", default=DEFAULT_DATA)
    args = parser.parse_args()
    questions = load_questions(Path(args.data), None)
    paragraphs = {title: "".join(sentences) for q in questions for title, sentences in q["context"]}
    question_of = {q["_id"]: q["question"] for q in questions}
    seen, dropped, cut = set(), 0, 0
    for path in args.reports:
        run = read_run(Path(path))
        for row in run["per_question"]:
            reports = [row["markdown"]] + [row[k]["markdown"] for k in ("checked", "checked_greedy")
                                           if "markdown" in row.get(k, {})]
            for markdown in reports:
                sources = [Source(url=url, title=title, fetched_at=0.0, content_hash="")
                           for title, url in _SOURCE_LINE.findall(markdown)]
                texts = {s.url: paragraphs.get(s.title, "") for s in sources}
                for finding in findings(markdown):
                    if finding in seen:
                        continue
                    seen.add(finding)
                    checked = filter_claims(finding, sources, texts, question_of[row["id"]])
                    if checked.dropped and checked.body:  # copied across an excerpt's cuts: its whole sentences
                        cut += 1
                        print(f"cut (gold {row['gold']!r}): {finding}\n  to: {checked.body}")
                    elif checked.dropped:
                        dropped += 1
                        print(f"dropped (gold {row['gold']!r}): {finding}")
    print(f"{dropped} of {len(seen)} recorded findings dropped by the word check as it is now, {cut} cut to their "
          "whole sentences")


if __name__ == "__main__":
    main()
