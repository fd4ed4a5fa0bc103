"""Answer mode: shorten and normalise the trajectories' answers and vote; without a majority, an LLM judge decides.

A majority (more than half of the answering trajectories, and at least two of them) wins outright. A tie, a
spread vote where no answer has a majority, a lone answer (a job of one trajectory), or no answer at all (every
trajectory gave up, or answered a "who" question with "yes") goes to the judge: it reads the best pages all
trajectories fetched together (pooled evidence, see evidence.py) and answers the question from them. If its answer
is one of the trajectories' answers, that group wins; otherwise its own answer stands, cited to the fetched pages it
read. The judge is not shown the candidates:
measured on the embedded model, a list of candidates anchors it to a wrong one far more often than it helps.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from heavy.agent.steps import TrajectoryResult, answer_line
from heavy.aggregate.evidence import Passage, pooled_passages, token_f1
from heavy.aggregate.normalize import normalize_answer, vote_key
from heavy.aggregate.shorten import off_kind, shorten_answers
from heavy.llm.types import LLMBackend, LLMError, Sampling, Usage

log = logging.getLogger(__name__)

JUDGE_TOKENS = 24
JUDGE_PASSAGES = 4
MIN_MAJORITY = 2  # one trajectory alone is not a consensus: its answer is checked by the judge
SAME_ANSWER_F1 = 0.5  # the judge's answer counts as a group's answer from this token overlap on

JUDGE_PROMPT = """Passages:
{passages}

Question: {question}

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
    cited: tuple[str, ...] = ()  # URLs of fetched pages backing the answer

    @property
    def backers(self) -> tuple[int, ...]:
        """Trajectories that gave the winning answer (none when the judge's own answer won)."""
        return self.groups[0].members if self.groups and self.groups[0].answer == self.answer else ()


def tally(results: Sequence[TrajectoryResult], answers: Mapping[int, str] | None = None) -> tuple[Group, ...]:
    """Groups of equal normalised answers, largest first, ties by summed confidence. `answers` (trajectory index →
    answer) replaces the trajectories' own answers, e.g. with their shortened forms."""
    members: dict[str, list[TrajectoryResult]] = defaultdict(list)
    written: dict[int, str] = {r.index: (answers or {}).get(r.index, r.answer).strip() for r in results}
    for result in results:
        key = vote_key(written[result.index])
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
               sampling: Sampling = Sampling(), prefix_key: str | None = None,
               min_majority: int = MIN_MAJORITY) -> Vote:
    answers, usage = await shorten_answers(question, results, backend, sampling, prefix_key)
    groups = tally(results, answers)
    top = len(groups[0].members) if groups else 0
    if groups and ((top >= min_majority and 2 * top > sum(len(g.members) for g in groups)) or backend is None):
        return _group_won(groups[0], groups, results, usage)
    # No majority, or no answer at all: the judge reads what was fetched (nothing fetched, nothing to judge).
    passages = [] if backend is None else pooled_passages(question, results, [g.answer for g in groups],
                                                          k=JUDGE_PASSAGES)
    verdict, judge_usage = ("", Usage())
    if passages:
        verdict, judge_usage = await _judge(question, passages, backend, sampling, prefix_key)
    usage = usage + judge_usage
    if not verdict:  # a failed or empty judge must not fail the job: the vote's order stands
        return _group_won(groups[0], groups, results, usage) if groups else Vote("", 0.0, (), usage=usage)
    scores = [token_f1(verdict, g.answer) for g in groups]
    best = max(range(len(groups)), key=lambda i: (scores[i], len(groups[i].members), groups[i].confidence), default=0)
    if groups and scores[best] >= SAME_ANSWER_F1:
        return _group_won(groups[best], groups, results, usage, judged=True)
    needle = f" {normalize_answer(verdict)} "
    containing = tuple(p.url for p in passages if needle in f" {normalize_answer(p.text)} ")
    return Vote(answer=verdict, agreement=0.0, groups=groups, judged=True, usage=usage,
                cited=containing or tuple(p.url for p in passages))


def _group_won(winner: Group, groups: Sequence[Group], results: Sequence[TrajectoryResult], usage: Usage,
               judged: bool = False) -> Vote:
    answered = sum(len(g.members) for g in groups)
    return Vote(answer=winner.answer, agreement=len(winner.members) / answered,
                groups=(winner, *[g for g in groups if g is not winner]), judged=judged, usage=usage,
                cited=_cited_by(winner, results))


def _cited_by(group: Group, results: Sequence[TrajectoryResult]) -> tuple[str, ...]:
    by_index = {r.index: r for r in results}
    return tuple(dict.fromkeys(s.url for i in group.members for s in by_index[i].cited))


async def _judge(question: str, passages: Sequence[Passage], backend: LLMBackend, sampling: Sampling,
                 prefix_key: str | None) -> tuple[str, Usage]:
    """The judge's short answer from the pooled passages ("" when it fails)."""
    listed = "\n".join(f"[{n}] {p.title}: {p.text}" for n, p in enumerate(passages, start=1))
    prompt = JUDGE_PROMPT.format(passages=listed, question=question)
    try:
        completion = await backend.chat([{"role": "user", "content": prompt}], None, sampling,
                                        max_tokens=JUDGE_TOKENS, request_id="judge", prefix_key=prefix_key)
    except LLMError as exc:
        log.warning("judge failed, keeping the vote's order: %s", exc)
        return "", Usage()
    verdict = answer_line(completion.content)
    return ("" if off_kind(question, verdict) else verdict), completion.usage
