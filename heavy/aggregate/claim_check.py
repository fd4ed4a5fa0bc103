"""The model check of a report's claims (on by default; `HEAVY_CHECK_CLAIMS=false` turns it off).

The word check (citations.py) keeps a claim when a passage of a cited page holds its words; it cannot see that "break
and continue skip the else clause" says the opposite of a page that holds all those words. This check puts each claim
the word check kept to the model with that passage, and drops the claims the model finds unsupported.

A small model says "no" to most claims, right or wrong, yet gives a claim a higher probability of "yes" than the same
claim negated when the passage supports it. So where the backend gives log-probabilities, the claim and its negation
(`negations`) are both asked, and the claim is refuted when the model finds its negation the better supported; so
are its rivals, the claim with one of its numbers or names swapped for another of the passage's (swaps.py), which a
negation cannot stand in for ("finished in 1887" of a page saying "begun in 1887, finished in 1889"); without
log-probabilities the greedy yes or no decides. A claim that is a sentence of its cited page word for word is
not asked about: the page says it. `scripts/probe_claim_check.py` measures both on pairs whose truth is
known (docs/report_claims.md). A claim whose check fails (an error, a reply that is neither yes nor no) keeps the word
check's verdict: the check may only take claims out.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from heavy.agent.gathered import unescaped
from heavy.agent.steps import without_result_headers, word_run
from heavy.aggregate.citations import LIST_PREFIX, FilteredReport, without_empty_sections
from heavy.aggregate.evidence import SENTENCE_END, passages, sentences_of, stemmed_words
from heavy.aggregate.fit import PromptRoom
from heavy.aggregate.markers import MARKER, cited_numbers
from heavy.aggregate.swaps import swapped
from heavy.aggregate.tables import ROW, row_claim, table_lines, without_empty_tables
from heavy.llm.types import Completion, LLMBackend, LLMError, Sampling, Usage
from heavy.tools.base import Source

log = logging.getLogger(__name__)

CHECK_PROMPT = "Passage: {passage}\n\nClaim: {claim}\n\nDoes the passage support the claim? Answer yes or no."
CHECK_TOKENS = 4  # "yes" / "no", and room for a leading quote or "Yes,"
_SPACED_MARKER = re.compile(r"\s*" + MARKER.pattern)  # a claim is asked about without its markers
_REPLY = re.compile(r"\W*(yes|no)\b", re.IGNORECASE)
CHECK_ALTERNATIVES = 5  # of the reply's first token, read for "yes" and "no"
_AUXILIARIES = "is|are|was|were|can|could|will|would|should|must|may|might|has|have|had|does|do|did"
_AUXILIARY_NOT = re.compile(rf"\b({_AUXILIARIES}) not\b", re.IGNORECASE)
_CONTRACTED = {"isn't": "is", "aren't": "are", "wasn't": "was", "weren't": "were", "can't": "can", "cannot": "can",
               "couldn't": "could", "won't": "will", "wouldn't": "would", "shouldn't": "should", "mustn't": "must",
               "hasn't": "has", "haven't": "have", "hadn't": "had", "doesn't": "does", "don't": "do", "didn't": "did"}
_CONTRACTION = re.compile(r"\b(" + "|".join(map(re.escape, _CONTRACTED)) + r")(?!\w)", re.IGNORECASE)
_AUXILIARY = re.compile(rf"\b({_AUXILIARIES})\b", re.IGNORECASE)
# an opening subordinate clause ("If a break ends the loop, the else clause is skipped"): the claim's point is the
# main clause after it, whose auxiliary is the one to flip
_SUBORDINATE = re.compile(r"(?:if|when|whenever|while|although|though|because|since|unless|after|before|once|until)"
                          r"\b[^,]*,\s*", re.IGNORECASE)
_LOWERED = {"a", "an", "the", "it", "its", "this", "these", "that", "those", "they", "their", "there", "he", "she",
            "his", "her", "in", "on", "at", "from", "after", "before", "if", "when", "whenever", "while", "although",
            "though", "because", "since", "unless", "once", "until"}  # a claim's first word that is no name


@dataclass(frozen=True)
class CheckedBody:
    body: str
    refuted: tuple[str, ...]  # claims the model said the passage does not support, as written
    usage: Usage
    asked: int = 0  # claims put to the model
    weighed: int = 0  # of them, those it said yes or no to (a failed request, the endpoint down, says neither)


def passage_for(claim: str, texts: Sequence[str]) -> str:
    """The passage (evidence.passages) of the cited pages' texts that holds most of the claim's words, the first on
    a tie."""
    words = stemmed_words(claim)
    return max((run for text in texts for run in passages(text)), key=lambda run: len(words & stemmed_words(run)),
               default="")


def _flip(claim: str, start: int = 0) -> str | None:
    """`claim` with the polarity of its first auxiliary verb from `start` flipped ("is not" -> "is", "doesn't" ->
    "does", "was" -> "was not"); None without one."""
    first = min((m for m in (p.search(claim, start) for p in (_AUXILIARY_NOT, _CONTRACTION, _AUXILIARY)) if m),
                key=lambda m: m.start(), default=None)
    if first is None:
        return None
    word = first.group(1)
    if first.re is _AUXILIARY_NOT:
        flipped = word
    elif first.re is _CONTRACTION:
        flipped = _CONTRACTED[word.lower()]
        flipped = flipped.capitalize() if word[0].isupper() else flipped
    else:
        flipped = f"{word} not"
    return claim[:first.start()] + flipped + claim[first.end():]


def negated(claim: str) -> str:
    """`claim` with its first auxiliary verb's polarity flipped; without one ("It terminates the loop": flipping it
    would need the verb's base form), "It is not true that" before it."""
    claim = claim.replace("\u2019", "'")
    if (flipped := _flip(claim)) is not None:
        return flipped
    opening, _, rest = claim.partition(" ")
    return f"It is not true that {opening.lower() if opening.lower() in _LOWERED else opening} {rest}".rstrip()


def negations(claim: str) -> tuple[str, ...]:
    """What the claim is weighed against: `negated(claim)`, and after an opening "If ...," or "When ...," also the
    claim with its main clause's auxiliary flipped. A conditional can be wrong in either clause: the demo's "If the
    break statement is executed ..., the else clause ... is executed" is wrong in its main clause, which flipping its
    first auxiliary does not touch."""
    claim = claim.replace("\u2019", "'")
    first = negated(claim)
    clause = _SUBORDINATE.match(claim)
    main = _flip(claim, clause.end()) if clause else None
    return (first,) if main is None or main == first else (first, main)


def yes_share(reply: Completion) -> float | None:
    """P(yes) / (P(yes) + P(no)) over the first token's alternatives; None when the backend gave none, or neither
    word is among them, or the model reasoned first (its first token was reasoning, not the reply)."""
    if not reply.top_logprobs or reply.reasoning:
        return None
    yes = no = 0.0
    for token, logprob in reply.top_logprobs[0]:
        word = token.strip().strip("\"'").lower()
        yes += math.exp(logprob) if word == "yes" else 0.0
        no += math.exp(logprob) if word == "no" else 0.0
    return yes / (yes + no) if yes + no else None


async def supports(backend: LLMBackend, passage: str, claim: str, sampling: Sampling = Sampling(temperature=0.0),
                   prefix_key: str | None = None, request_id: str = "claim-check",
                   contrast: bool = True, room: PromptRoom = PromptRoom()) -> tuple[bool | None, Usage]:
    """Whether the model finds `claim` supported by `passage`: True, False, or None when it said neither or failed.
    With `contrast` and log-probabilities, False when one of the claim's `negations`, or of its rivals (the claim
    with a number or name swapped for another of the passage's, swaps.py), has the higher share of "yes" (asked only
    when the claim's reply came with log-probabilities); else the greedy reply to the claim."""
    asked = replace(sampling, top_logprobs=CHECK_ALTERNATIVES)

    async def ask(statement: str, suffix: str) -> Completion | None:
        fitted = room.fitted(passage, CHECK_TOKENS, CHECK_PROMPT.format(passage="", claim=statement))
        messages = [{"role": "user", "content": CHECK_PROMPT.format(passage=fitted, claim=statement)}]
        for how in (asked, replace(sampling, top_logprobs=0)):  # a server refusing log-probabilities: greedy
            try:
                return await backend.chat(messages, None, how, max_tokens=CHECK_TOKENS,
                                          request_id=request_id + suffix, prefix_key=prefix_key)
            except LLMError as exc:
                log.warning("claim check failed%s: %s", " with log-probabilities" if how.top_logprobs else "", exc)
        return None

    reply = await ask(claim, "")
    if reply is None:
        return None, Usage()
    share = yes_share(reply)
    opposites = []
    if contrast and share is not None:  # the negations and rivals are only worth asking with a share to beat
        against = [(statement, ":negated" + (f":{k}" if k else "")) for k, statement in enumerate(negations(claim))]
        against += [(rival, f":rival:{k}") for k, rival in enumerate(swapped(claim, passage))]
        opposites = await asyncio.gather(*(ask(statement, suffix) for statement, suffix in against))
    usage = sum((r.usage for r in opposites if r is not None), reply.usage)
    opposite_shares = [yes_share(r) if r is not None else None for r in opposites]
    if share is not None and opposite_shares and None not in opposite_shares:
        return share >= max(opposite_shares), usage
    said = _REPLY.match(reply.content)
    return (said.group(1).lower() == "yes" if said else None), usage


async def check_claims(body: str, sources: Sequence[Source], texts: dict[str, str], backend: LLMBackend,
                       sampling: Sampling = Sampling(temperature=0.0), prefix_key: str | None = None,
                       contrast: bool = True, label: str = "claim-check", room: PromptRoom = PromptRoom()
                       ) -> CheckedBody:
    """`body`: a report body the word check kept, its claims cited by `[n]` into `sources` (numbered from 1), whose
    fetched `texts` (url → text) hold the passages. Every cited claim is checked at once (the engine batches them);
    a claim the model refutes is taken out with its line's other claims left as they are, and a heading left with
    nothing under it goes, as the filter's do. `contrast`: as in
    `supports`; `label` starts the request ids."""
    lines = body.splitlines()
    tables = table_lines(lines)
    split: dict[int, tuple[str, list[str]]] = {}  # line index → (list prefix, sentences)
    for i, line in enumerate(lines):
        if tables.get(i) == ROW:  # one claim, as the filter checked it (tables.py)
            split[i] = ("", [line])
        elif line.strip() and not line.lstrip().startswith("#") and i not in tables:
            prefix = LIST_PREFIX.match(line).group()
            split[i] = (prefix, SENTENCE_END.split(line[len(prefix):]))
    claims = [(i, k) for i, (_, sentences) in split.items() for k, s in enumerate(sentences) if MARKER.search(s)]

    async def verdict(index: int, sentence: str) -> tuple[bool | None, Usage, bool]:
        """Whether the claim stands, what asking cost, and whether the model was asked."""
        pages = [texts.get(sources[n - 1].url, "") for n in sorted(cited_numbers(sentence)) if 0 < n <= len(sources)]
        claim = _SPACED_MARKER.sub("", row_claim(sentence) if tables.get(claims[index][0]) == ROW else sentence).strip()
        # a sentence of the page, word for word (quotes, escapes and line breaks aside; a snippet's "[1] Title /
        # URL:" lines too) is not weighed: the 0.5B refuted 10 of 40 pages' sentences as written
        said = word_run(unescaped(claim))
        if any(said == word_run(unescaped(sentence)) for page in pages
               for sentence in sentences_of(without_result_headers(page))):
            return True, Usage(), False
        passage = passage_for(claim, [p for p in pages if p])
        if not passage:
            return None, Usage(), False
        return *await supports(backend, passage, claim, sampling, prefix_key, request_id=f"{label}:{index}",
                               contrast=contrast, room=room), True

    verdicts = await asyncio.gather(*(verdict(index, split[i][1][k]) for index, (i, k) in enumerate(claims)))
    refuted = {(i, k) for (i, k), (ok, _, _) in zip(claims, verdicts, strict=True) if ok is False}
    kept_lines = []
    for i, line in enumerate(lines):
        if i in split and any(j == i for j, _ in refuted):
            prefix, sentences = split[i]
            left = [s for k, s in enumerate(sentences) if (i, k) not in refuted]
            if not left:
                continue
            line = prefix + " ".join(left)
        kept_lines.append(line)
    kept_lines = without_empty_sections(without_empty_tables(kept_lines))
    return CheckedBody(body=re.sub(r"\n{3,}", "\n\n", "\n".join(kept_lines)).strip(),
                       refuted=tuple(split[i][1][k].strip() for i, k in sorted(refuted)),
                       usage=sum((u for _, u, _ in verdicts), Usage()),
                       asked=sum(asked for _, _, asked in verdicts),
                       weighed=sum(asked and ok is not None for ok, _, asked in verdicts))


async def check_answers(answers: dict[str, FilteredReport], sources: Sequence[Source], texts: dict[str, str],
                        backend: LLMBackend, sampling: Sampling = Sampling(temperature=0.0),
                        prefix_key: str | None = None, room: PromptRoom = PromptRoom(),
                        ) -> tuple[dict[str, FilteredReport], Usage, bool]:
    """The trajectories' answers as the word check cited them (answer → its sentences a page holds, marked), each
    sentence put to the same check; a refuted one moves from the body to `refuted`. Short answers carry no marker
    and are not claims to check. Also: what the checks cost, and whether the model weighed any sentence put to it
    (or none was)."""
    asked = [answer for answer, filtered in answers.items() if MARKER.search(filtered.body)]
    checked = await asyncio.gather(*(check_claims(answers[answer].body, sources, texts, backend, sampling, prefix_key,
                                                  label=f"answer-check:{k}", room=room)
                                     for k, answer in enumerate(asked)))
    out = dict(answers)
    for answer, done in zip(asked, checked, strict=True):
        if done.refuted:
            left = cited_numbers(done.body)
            out[answer] = replace(answers[answer], body=done.body,
                                  cited=tuple(n for n in answers[answer].cited if n in left), refuted=done.refuted)
    weighed = any(done.weighed for done in checked) or not any(done.asked for done in checked)
    return out, sum((done.usage for done in checked), Usage()), weighed
