"""How well report mode's verbatim quotes pick the sentences that answer a question: HotpotQA's supporting facts.

Report mode quotes the fetched pages' sentences that hold the question's rarer words (`heavy/aggregate/quotes.py`).
HotpotQA marks, for each question, the sentences of its two gold paragraphs that the answer rests on. This script
gives the quote picker each question's 10 paragraphs (2 gold, 8 distractors: HotpotQA's "distractor setting") as the
fetched pages, and measures, with no model and in seconds:
- supporting facts quoted: the share of the marked sentences among the quotes;
- both pages quoted: the share of questions with a quote from each gold paragraph (a two-hop answer needs both);
- answer quoted: the share of questions, yes/no aside, whose gold answer is written in a quote.
Each for 3 quotes (beside findings) and 6 (in their stead), for the picker before this measure and with each rule
since added. Last, for the sentence shown beside an answer (`answer_sentence`), given the gold answer: how often it is
a supporting fact.

    .venv/bin/python scripts/eval_quotes.py [--data ../shared/data/hotpotqa-dev49.jsonl]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from heavy.aggregate.evidence import question_weights
from heavy.aggregate.normalize import normalize_answer
from heavy.aggregate.quotes import Shares, answer_sentence, pick_quotes
from heavy.aggregate.report import KEY_SENTENCES, QUOTES_BESIDE_FINDINGS

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hotpotqa-dev49.jsonl"


def _flat(text: str) -> str:
    return " ".join(text.split())


def score_question(row: dict, count: int, shares: Shares) -> tuple[float, bool, bool | None]:
    """(share of supporting facts quoted, both gold pages quoted, gold answer in a quote or None for yes/no)."""
    titles = [title for title, _ in row["context"]]
    pages = {n: (title, "".join(sentences).strip()) for n, (title, sentences) in enumerate(row["context"], start=1)}
    weights = question_weights(row["question"], [text for _, text in pages.values()])
    picked = pick_quotes(row["question"], pages, weights, count, shares=shares)
    quoted = [_flat(sentence) for sentence, _ in picked]
    facts = [_flat(dict(row["context"])[title][i]) for title, i in row["supporting_facts"]
             if title in titles and i < len(dict(row["context"])[title])]
    found = sum(any(fact in q or q in fact for q in quoted) for fact in facts)
    gold_pages = {titles.index(title) + 1 for title, _ in row["supporting_facts"] if title in titles}
    both = gold_pages <= {n for _, n in picked}
    answer = normalize_answer(row["answer"])
    in_quote = None if answer in ("yes", "no") else any(f" {answer} " in f" {normalize_answer(q)} " for q in quoted)
    return found / max(len(facts), 1), both, in_quote


SETTINGS = {  # each adds one rule to the one above
    "by words alone (before)": Shares(covered=1.0, title=0.0, bridge=0.0),
    "+ covered words count half": Shares(title=0.0, bridge=0.0),
    "+ the page's title": Shares(bridge=0.0),
    "+ pages a quote names (now)": Shares(),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--start", type=int, default=0, help="skip the first N questions")
    parser.add_argument("--limit", type=int, default=None, help="N questions only")
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    rows = rows[args.start:][:args.limit]
    print(f"questions {args.start + 1}-{args.start + len(rows)}, 10 paragraphs each as the fetched pages")
    print(f"{'quotes':>6}  {'picker':<28}  {'supporting facts quoted':>23}  {'both pages quoted':>17}  answer quoted")
    for count in (QUOTES_BESIDE_FINDINGS, KEY_SENTENCES):
        for name, shares in SETTINGS.items():
            scores = [score_question(row, count, shares) for row in rows]
            answered = [a for _, _, a in scores if a is not None]
            print(f"{count:>6}  {name:<28}  {sum(s for s, _, _ in scores) / len(scores):>23.3f}  "
                  f"{sum(b for _, b, _ in scores) / len(scores):>17.3f}  "
                  f"{sum(answered) / max(len(answered), 1):.3f} of {len(answered)}")
    shown = [fact for row in rows if (fact := answer_sentence_is_a_fact(row)) is not None]
    print(f"\nthe gold answer's sentence (answer_sentence): a supporting fact for {sum(shown)} of the {len(shown)} "
          f"questions where one writes the answer out ({len(rows)} questions)")


def answer_sentence_is_a_fact(row: dict) -> bool | None:
    """Whether the sentence shown beside the gold answer is one of the supporting facts (None: no sentence)."""
    pages = {n: (title, "".join(sentences).strip()) for n, (title, sentences) in enumerate(row["context"], start=1)}
    weights = question_weights(row["question"], [text for _, text in pages.values()])
    stated = answer_sentence(row["question"], row["answer"], pages, weights)
    if stated is None:
        return None
    sentences = dict(row["context"])
    facts = [_flat(sentences[title][i]) for title, i in row["supporting_facts"] if i < len(sentences.get(title, []))]
    return any(fact in _flat(stated[0]) or _flat(stated[0]) in fact for fact in facts)


if __name__ == "__main__":
    main()
