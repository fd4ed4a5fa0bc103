"""The model check of a report's claims (off by default; `HEAVY_CHECK_CLAIMS=true`).

The word check (citations.py) keeps a claim when a passage of a cited page holds its words; it cannot see that "break
and continue skip the else clause" says the opposite of a page that holds all those words. This check asks the model,
for each claim the word check kept, whether that passage supports it, and drops the claims it says no to.

It is only as good as the model that answers: `scripts/probe_claim_check.py` measures a model on pairs whose truth is
known (docs/report_claims.md). The embedded 0.5B model says "no" to nearly everything, so the check is off unless a
deployment turns it on for a judge that passes the probe. A claim whose check fails (an error, a reply that is neither
yes nor no) keeps the word check's verdict: the check may only take claims out.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from heavy.aggregate.citations import LIST_PREFIX, MARKER, cited_numbers
from heavy.aggregate.evidence import SENTENCE_END, passages, stemmed_words
from heavy.llm.types import LLMBackend, LLMError, Sampling, Usage
from heavy.tools.base import Source

log = logging.getLogger(__name__)

CHECK_PROMPT = "Passage: {passage}\n\nClaim: {claim}\n\nDoes the passage support the claim? Answer yes or no."
CHECK_TOKENS = 4  # "yes" / "no", and room for a leading quote or "Yes,"
_SPACED_MARKER = re.compile(r"\s*" + MARKER.pattern)  # a claim is asked about without its markers
_REPLY = re.compile(r"\W*(yes|no)\b", re.IGNORECASE)


@dataclass(frozen=True)
class CheckedBody:
    body: str
    refuted: tuple[str, ...]  # claims the model said the passage does not support, as written
    usage: Usage


def passage_for(claim: str, texts: Sequence[str]) -> str:
    """The passage (evidence.passages) of the cited pages' texts that holds most of the claim's words, the first on
    a tie."""
    words = stemmed_words(claim)
    return max((run for text in texts for run in passages(text)), key=lambda run: len(words & stemmed_words(run)),
               default="")


async def supports(backend: LLMBackend, passage: str, claim: str, sampling: Sampling = Sampling(temperature=0.0),
                   prefix_key: str | None = None, request_id: str = "claim-check") -> tuple[bool | None, Usage]:
    """Whether the model says `passage` supports `claim`: True, False, or None when it said neither or failed."""
    prompt = CHECK_PROMPT.format(passage=passage, claim=claim)
    try:
        reply = await backend.chat([{"role": "user", "content": prompt}], None, sampling, max_tokens=CHECK_TOKENS,
                                   request_id=request_id, prefix_key=prefix_key)
    except LLMError as exc:
        log.warning("claim check failed, the word check stands: %s", exc)
        return None, Usage()
    said = _REPLY.match(reply.content)
    return (said.group(1).lower() == "yes" if said else None), reply.usage


async def check_claims(body: str, sources: Sequence[Source], texts: dict[str, str], backend: LLMBackend,
                       sampling: Sampling = Sampling(temperature=0.0), prefix_key: str | None = None) -> CheckedBody:
    """`body`: a report body the word check kept, its claims cited by `[n]` into `sources` (numbered from 1), whose
    fetched `texts` (url → text) hold the passages. Every cited claim is checked at once (the engine batches them);
    a claim the model refutes is taken out with its line's other claims left as they are."""
    lines = body.splitlines()
    split: dict[int, tuple[str, list[str]]] = {}  # line index → (list prefix, sentences)
    for i, line in enumerate(lines):
        if line.strip() and not line.lstrip().startswith("#"):
            prefix = LIST_PREFIX.match(line).group()
            split[i] = (prefix, SENTENCE_END.split(line[len(prefix):]))
    claims = [(i, k) for i, (_, sentences) in split.items() for k, s in enumerate(sentences) if MARKER.search(s)]

    async def verdict(n: int, sentence: str) -> tuple[bool | None, Usage]:
        pages = [texts.get(sources[n - 1].url, "") for n in sorted(cited_numbers(sentence)) if 0 < n <= len(sources)]
        claim = _SPACED_MARKER.sub("", sentence).strip()
        passage = passage_for(claim, [p for p in pages if p])
        if not passage:
            return None, Usage()
        return await supports(backend, passage, claim, sampling, prefix_key, request_id=f"claim-check:{n}")

    verdicts = await asyncio.gather(*(verdict(n, split[i][1][k]) for n, (i, k) in enumerate(claims)))
    refuted = {(i, k) for (i, k), (ok, _) in zip(claims, verdicts, strict=True) if ok is False}
    kept_lines = []
    for i, line in enumerate(lines):
        if i in split and any(j == i for j, _ in refuted):
            prefix, sentences = split[i]
            left = [s for k, s in enumerate(sentences) if (i, k) not in refuted]
            if not left:
                continue
            line = prefix + " ".join(left)
        kept_lines.append(line)
    return CheckedBody(body=re.sub(r"\n{3,}", "\n\n", "\n".join(kept_lines)).strip(),
                       refuted=tuple(split[i][1][k].strip() for i, k in sorted(refuted)),
                       usage=sum((u for _, u in verdicts), Usage()))
