"""Answer mode: shorten and normalise the trajectories' answers and vote; without a majority, an LLM judge decides.

A majority (more than half of the answering trajectories) wins outright. A tie, or a spread vote where no answer
has a majority, goes to the judge: it reads the best pages all trajectories fetched together (pooled evidence,
see evidence.py) and answers the question from them; the candidate closest to its answer wins. The judge can only
pick one of the trajectories' answers, so every answer stays backed by a trajectory's sources.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from heavy.agent.steps import TrajectoryResult
from heavy.aggregate.evidence import pooled_passages, token_f1
from heavy.aggregate.normalize import normalize_answer
from heavy.aggregate.shorten import shorten_answers
from heavy.llm.types import LLMBackend, LLMError, Sampling, Usage

log = logging.getLogger(__name__)

JUDGE_TOKENS = 24
JUDGE_PASSAGES = 4

JUDGE_PROMPT = """Passages:
{passages}

Question: {question}

Researchers proposed these answers: {candidates}.
Using only the passages, answer the question with the shortest phrase (a name, a date, a number, a place, or \
yes/no). Reply with the phrase only."""


@dataclass(frozen=True)
class Group:
    key: str  # normalised answer
    answer: str  # the most common written form
    members: tuple[int, ...]  # trajectory indices
    confidence: float  # sum over members


@dataclass(frozen=True)
class Vote:
    answer: str  # "" when no trajectory answered
    agreement: float  # share of answering trajectories behind the answer
    groups: tuple[Group, ...]  # best first
    judged: bool = False
    usage: Usage = field(default_factory=Usage)


def tally(results: Sequence[TrajectoryResult], answers: Mapping[int, str] | None = None) -> tuple[Group, ...]:
    """Groups of equal normalised answers, largest first, ties by summed confidence. `answers` (trajectory index →
    answer) replaces the trajectories' own answers, e.g. with their shortened forms."""
    members: dict[str, list[TrajectoryResult]] = defaultdict(list)
    written: dict[int, str] = {r.index: (answers or {}).get(r.index, r.answer).strip() for r in results}
    for result in results:
        key = normalize_answer(written[result.index])
        if key:
            members[key].append(result)
    groups = []
    for key, rs in members.items():
        forms = [written[r.index] for r in rs]
        common = max(forms, key=lambda f: (forms.count(f), -len(f)))  # most common, then shortest
        groups.append(Group(key=key, answer=common, members=tuple(r.index for r in rs),
                            confidence=sum(r.confidence for r in rs)))
    return tuple(sorted(groups, key=lambda g: (-len(g.members), -g.confidence, g.key)))


def agreeing(results: Sequence[TrajectoryResult], k: int) -> Group | None:
    """The group that k trajectories already agree on, if any (early stop in answer mode)."""
    groups = tally(results)
    return groups[0] if groups and len(groups[0].members) >= k else None


async def vote(question: str, results: Sequence[TrajectoryResult], backend: LLMBackend | None,
               sampling: Sampling = Sampling()) -> Vote:
    answers, usage = await shorten_answers(question, results, backend, sampling)
    groups = tally(results, answers)
    answered = sum(len(g.members) for g in groups)
    if not groups:
        return Vote(answer="", agreement=0.0, groups=(), usage=usage)
    if 2 * len(groups[0].members) > answered or backend is None:
        return Vote(answer=groups[0].answer, agreement=len(groups[0].members) / answered, groups=groups, usage=usage)
    winner, judge_usage = await _judge(question, groups, results, backend, sampling)
    ordered = (winner, *[g for g in groups if g is not winner])
    return Vote(answer=winner.answer, agreement=len(winner.members) / answered, groups=ordered, judged=True,
                usage=usage + judge_usage)


async def _judge(question: str, groups: Sequence[Group], results: Sequence[TrajectoryResult], backend: LLMBackend,
                 sampling: Sampling) -> tuple[Group, Usage]:
    """The group whose answer is closest to what the judge reads in the pooled evidence; the vote's order when
    the judge fails or its answer matches no group."""
    candidates = [g.answer for g in groups]
    passages = pooled_passages(question, results, candidates, k=JUDGE_PASSAGES)
    listed = "\n".join(f"[{n}] {p.title}: {p.text}" for n, p in enumerate(passages, start=1)) or "(none)"
    prompt = JUDGE_PROMPT.format(passages=listed, question=question,
                                 candidates="; ".join(f'"{c}"' for c in candidates))
    try:
        completion = await backend.chat([{"role": "user", "content": prompt}], None, sampling,
                                        max_tokens=JUDGE_TOKENS, request_id="judge")
    except LLMError as exc:  # a failed judge must not fail the job
        log.warning("judge failed, keeping the vote's order: %s", exc)
        return groups[0], Usage()
    verdict = completion.content.strip()
    scores = [token_f1(verdict, g.answer) for g in groups]
    best = max(range(len(groups)), key=lambda i: (scores[i], len(groups[i].members), groups[i].confidence))
    return (groups[best] if scores[best] > 0 else groups[0]), completion.usage
