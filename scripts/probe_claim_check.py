"""Can a model check a report's claim against its cited passage? A probe before building a model check of claims.

The report keeps a claim when one passage of a cited page holds its words (`heavy/aggregate/citations.py`). That
cannot tell "a break skips the else clause" from the demo's wrong "break does not affect the else clause" when the
page holds the words of both. A model that reads the passage could, if it is good enough: this probe asks it, for
pairs whose truth is known, whether the passage supports the claim, through the report's own check
(`heavy/aggregate/claim_check.py`) as shipped (the claim against its negations and rivals) and by the greedy reply
alone, and prints how many it got right, how many wrong claims it would keep and right ones it would drop, and how
long a check took.

    .venv/bin/python scripts/probe_claim_check.py              # the embedded model
    HEAVY_BACKEND=openai HEAVY_OPENAI_BASE_URL=... .venv/bin/python scripts/probe_claim_check.py

The pairs: 10 written by hand (the wrong ones are the demo's errors about break/continue/else; the passages the
Python reference's own sentences on loops, and one on the Eiffel Tower), 40 generated from the Python reference
(`generated_pairs`: sentences as written, and with their polarity flipped), and 80 from HotpotQA's supporting
sentences (`swapped_pairs`: as written, and with a number or name swapped for another of the paragraph's), when the
eval's questions are at `--data`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import re
import time
from pathlib import Path

from eval_hotpotqa import DEFAULT_DATA, load_questions  # the eval's questions, beside this script

from heavy.aggregate.claim_check import passage_for, supports
from heavy.aggregate.evidence import negates, sentences_of
from heavy.aggregate.swaps import swapped
from heavy.config import get_settings
from heavy.llm import make_backend

BREAK = ("break may only occur syntactically nested in a for or while loop, but not nested in a function or class "
         "definition within that loop. It terminates the nearest enclosing loop, skipping the optional else clause "
         "if the loop has one.")
FOR = ("A break statement executed in the first suite terminates the loop without executing the else clause's "
       "suite. A continue statement executed in the first suite skips the rest of the suite and continues with the "
       "next item, or with the else clause if there is no next item.")
_NEGATIONS = re.compile(r"\bnot\b|n[’']t\b|\bno\b|\bnever\b")
EIFFEL = "The Eiffel Tower was completed in 1889 as the entrance arch to the World's Fair."
# (passage, claim, whether the passage supports it)
PAIRS = [
    (BREAK, "The break statement in a for or while loop does not affect the else clause of a loop.", False),
    (FOR, "The break and continue statements do not affect the else clause of a loop.", False),
    (FOR, "The else clause of a loop terminates the loop without executing the break statement.", False),
    (FOR, "The else clause is executed when a break ends the loop.", False),
    (EIFFEL, "The tower was finished in 1901.", False),
    (BREAK, "The break statement terminates the nearest enclosing loop, skipping the optional else clause if the "
            "loop has one.", True),
    (FOR, "A continue statement skips the rest of the suite and continues with the next item.", True),
    (FOR, "The else clause is not executed when a break ends the loop.", True),
    (EIFFEL, "The tower was finished in 1889.", True),
    (BREAK, "A break ends the innermost loop and its else clause does not run.", True),
]
GENERATED_EACH = 10  # pairs of each of the four generated kinds
SWAPPED_EACH = 40  # pairs of a right and a swapped sentence
_COPULA = re.compile(r"\b(is|are)\b")
_COPULA_NOT = re.compile(r"\b(is|are) not\b")


def generated_pairs(each: int = GENERATED_EACH) -> list[tuple[str, str, bool]]:
    """Pairs from the Python reference (`pydoc_data.topics`, on every machine): a sentence as written (supported),
    the same sentence with "is"/"are" negated or its "is not"/"are not" made positive (not supported), each with the
    page's passage the check itself would pick for it. The weak models' wrong claims are mostly a page's sentence
    with its polarity flipped, which the word check cannot see; spread over the topics, picked by a fixed stride."""
    from pydoc_data.topics import topics

    affirmed, negated, seen = [], [], set()
    for _, page in sorted(topics.items()):
        for sentence in (" ".join(s.split()) for s in sentences_of(page)):
            if sentence in seen:  # several topics share paragraphs
                continue
            seen.add(sentence)
            if (not 10 <= len(sentence.split()) <= 30 or not sentence[0].isupper() or not sentence.endswith(".")
                    or sentence.endswith("i.e.") or any(ch in sentence for ch in "*`=()[]{}>|\"")):
                continue  # code, markup and cut-off sentences say nothing a reader could check
            if _COPULA_NOT.search(sentence) and len(_NEGATIONS.findall(sentence)) == 1:
                negated.append((page, sentence))
            elif not negates(sentence) and _COPULA.search(sentence):
                affirmed.append((page, sentence))
    pairs = []
    for found, flip in ((affirmed, lambda s: _COPULA.sub(r"\1 not", s, count=1)),
                        (negated, lambda s: _COPULA_NOT.sub(r"\1", s, count=1))):
        # a sentence the page writes twice in other words (str.partition and str.rpartition) may find the other
        # one's passage, which would not support it: only pairs whose passage holds the sentence are known true
        known = [(page, sentence, passage) for page, sentence in found
                 if sentence in " ".join((passage := passage_for(sentence, [page])).split())]
        for page, sentence, passage in known[::max(1, len(known) // each)][:each]:
            pairs += [(passage, sentence, True), (passage_for(flipped := flip(sentence), [page]), flipped, False)]
    return pairs


def swapped_pairs(data: Path, each: int = SWAPPED_EACH) -> list[tuple[str, str, bool]]:
    """Pairs from HotpotQA's supporting sentences (`data`, the eval's questions): a sentence as written, its
    paragraph the passage (supported), and the sentence with its first number, else name, swapped for another of
    the paragraph's (not supported): a right fact given to the wrong thing, which no negation exposes."""
    pairs = []
    for row in load_questions(data, None):
        paragraphs = dict((title, sentences) for title, sentences in row["context"])
        for title, k in row["supporting_facts"]:
            sentences = paragraphs.get(title, [])
            passage, claim = "".join(sentences).strip(), sentences[k].strip() if k < len(sentences) else ""
            wrong = swapped(claim, passage, limit=1)
            if wrong and len(claim.split()) >= 5:
                pairs += [(passage, claim, True), (passage, wrong[0], False)]
    return pairs[:2 * each]


async def probe(each: int = GENERATED_EACH, data: Path = DEFAULT_DATA) -> None:
    """Each pair checked by the report's own check (`claim_check.supports`), as shipped (the claim against its
    negations and rivals, where the backend gives log-probabilities) and by the greedy reply alone; the counts by
    kind. The swapped pairs need the eval's questions (`data`); without them that kind is left out."""
    settings = get_settings()
    backend = make_backend(settings, settings.backend)
    kinds = {"hand-written": PAIRS, "generated": generated_pairs(each)}
    if data.exists():
        kinds["swapped"] = swapped_pairs(data)
    else:
        print(f"(no {data}: the swapped pairs are left out)")
    try:
        for (kind, pairs), contrast in itertools.product(kinds.items(), (True, False)):
            kind = f"{kind}, {'contrast' if contrast else 'greedy'}"
            counts, started = {"right": 0, "wrong kept": 0, "right dropped": 0, "neither": 0}, time.monotonic()
            for passage, claim, supported in pairs:
                said, _ = await supports(backend, passage, claim, prefix_key="probe", contrast=contrast)
                counts["right"] += said is supported
                counts["wrong kept"] += said is True and not supported
                counts["right dropped"] += said is False and supported
                counts["neither"] += said is None
                print(f"{kind:22} supported={supported!s:5} said={said!s:5} {claim[:70]}")
            seconds = (time.monotonic() - started) / len(pairs)
            wrong, right = sum(not ok for *_, ok in pairs), sum(ok for *_, ok in pairs)
            print(f"== {kind}: {counts['right']}/{len(pairs)} right; wrong claims kept {counts['wrong kept']}/{wrong}, "
                  f"right claims dropped {counts['right dropped']}/{right}, neither {counts['neither']}; "
                  f"{seconds:.1f} s a check\n")
    finally:
        await backend.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="HotpotQA questions for the swapped pairs")
    asyncio.run(probe(data=parser.parse_args().data))
