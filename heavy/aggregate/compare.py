"""Answer mode, opt-in: the job's candidate answers compared two at a time on the judge's pages.

Asked of one candidate at a time whether it is right, the 1.5B model gave nearly the same share of "yes" to each
(docs/eval_hotpotqa.md, nineteenth session); shown two side by side, it preferred the right one in 47 of 56 pairs
of its own recorded candidates (twenty-first session, the gold paragraphs among the passages). Each pair is asked in
both orders, since a small model leans to the answer it reads first, and scored by the share of each letter in the
first token's alternatives (the greedy letter where the backend gives none). The candidate that wins the most
comparisons wins; ties go to the one with more ballots.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import replace

from heavy.aggregate.evidence import Passage
from heavy.llm.types import Completion, LLMBackend, LLMError, Sampling, Usage

log = logging.getLogger(__name__)

COMPARED = 4  # candidates with the most ballots that are compared: 6 pairs, 12 calls
LETTER_ALTERNATIVES = 10

COMPARE_PROMPT = """Passages:
{passages}

Question: {question}

Two proposed answers:
A) {first}
B) {second}

Which proposed answer is right according to the passages? Reply with the letter only."""


def first_share(reply: Completion) -> float | None:
    """P(A) / (P(A) + P(B)) over the first token's alternatives, else from the greedy letter; None for neither."""
    a = b = 0.0
    for token, logprob in reply.top_logprobs[0] if reply.top_logprobs else ():
        letter = token.strip().strip("()").upper()
        a += math.exp(logprob) if letter == "A" else 0.0
        b += math.exp(logprob) if letter == "B" else 0.0
    if a + b:
        return a / (a + b)
    said = reply.content.strip().strip("()").upper()[:1]
    return {"A": 1.0, "B": 0.0}.get(said)


async def compare(question: str, candidates: Sequence[tuple[str, int]], passages: Sequence[Passage],
                  backend: LLMBackend, sampling: Sampling, prefix_key: str | None) -> tuple[str | None, Usage]:
    """The candidate (answer, ballots) that wins the most pairwise comparisons on `passages`, ties to more ballots;
    None with fewer than two candidates or no passages, or when no comparison got an answer."""
    ranked = sorted(candidates, key=lambda c: -c[1])[:COMPARED]
    if len(ranked) < 2 or not passages:
        return None, Usage()
    listed = "\n".join(f"[{n}] {p.title}: {p.text}" for n, p in enumerate(passages, start=1))
    asked = replace(sampling, temperature=0.0, top_logprobs=LETTER_ALTERNATIVES)
    usage = Usage()

    async def share(first: str, second: str, request_id: str) -> float | None:
        nonlocal usage
        prompt = COMPARE_PROMPT.format(passages=listed, question=question, first=first, second=second)
        try:
            reply = await backend.chat([{"role": "user", "content": prompt}], None, asked, max_tokens=1,
                                       request_id=request_id, prefix_key=prefix_key)
        except LLMError as exc:
            log.warning("the comparison %s failed: %s", request_id, exc)
            return None
        usage = usage + reply.usage
        return first_share(reply)

    pairs = list(itertools.combinations(range(len(ranked)), 2))
    shares = await asyncio.gather(*(share(ranked[first][0], ranked[second][0], f"compare:{first}:{second}")
                                    for i, j in pairs for first, second in ((i, j), (j, i))))
    wins = [0.0] * len(ranked)
    answered = False
    for (i, j), ab, ba in zip(pairs, shares[::2], shares[1::2], strict=True):
        if ab is None or ba is None:
            continue
        answered = True
        for_i = (ab + (1.0 - ba)) / 2  # i's share, both orders
        wins[i] += 1.0 if for_i > 0.5 else 0.5 if for_i == 0.5 else 0.0
        wins[j] += 1.0 if for_i < 0.5 else 0.5 if for_i == 0.5 else 0.0
    if not answered:
        return None, usage
    best = max(range(len(ranked)), key=lambda k: (wins[k], ranked[k][1], -k))
    return ranked[best][0], usage
