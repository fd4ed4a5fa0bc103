"""Answer mode: shorten and normalise the trajectories' answers and vote; without a majority, the judge decides.

A sentence the shortening could not cut votes with the one short answer it contains ("Eenasul Fateh, also known as
Aladin, is a magician" with "Eenasul Fateh"), to a "who" question a surname with the one full name it ends, and a
short answer naming one of the options a question offers with that option (options.py); plurals fold in the vote key
(normalize.py). A majority (more than half of the answering trajectories, and at least two of them) wins outright,
unless `read_on_majority` asks the judge's readings to vote in every job of more than one trajectory. A tie, a spread
vote where no answer has a majority, a lone answer (a job of one trajectory), or no answer at all (every trajectory
gave up, or answered a "who" question with "yes") goes to the judge (judge.py), in two rounds:
- it reads the best pages all trajectories fetched (evidence.py picks them) once per trajectory, each time in
  another order (a small model answers from the page it reads first), and in a job of fewer trajectories than
  pages once more per page, so that each page is read first once (a lone trajectory's four pages in four orders).
  Every trajectory's answer and every reading is a ballot; the answer with the most ballots wins, if no other has
  as many and it has at least two;
- else, on a tie, the tied answer the readings favour when the reading of those pages in rank order (the first
  trajectory's) is none of the tied answers, else that reading decides; a job no trajectory answered takes the first
  reading that gave an answer.
If the winning answer is one of the trajectories' answers (or a reading that only restates one), that group wins;
otherwise it stands on its own, cited to the fetched pages that hold it.
The winner is written in the form the fetched pages write most (a plural the pages write singular is shown
singular; normalize.as_sources_write).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from heavy.agent.steps import TrajectoryResult
from heavy.aggregate.evidence import fetched_texts, pooled_passages, token_f1
from heavy.aggregate.fit import PromptRoom
from heavy.aggregate.judge import JUDGE_PASSAGES, Judge
from heavy.aggregate.normalize import as_sources_write, normalize_answer, plain_answer, vote_key
from heavy.aggregate.options import as_option, as_options
from heavy.aggregate.shorten import JOINING, asks_who, cut_by_rule, is_short, says_more, shorten_answers
from heavy.llm.types import LLMBackend, Sampling, Usage

MIN_MAJORITY = 2  # one trajectory alone is not a consensus: its answer is checked by the judge
SAME_ANSWER_F1 = 0.5  # the judge's answer counts as a group's answer from this token overlap on


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
    readings: tuple[tuple[int, str], ...] = ()  # (trajectory index, the judge's reading), reading 0 in rank order

    @property
    def reads(self) -> dict[int, str]:
        """Trajectory index → the judge's reading of the job's pages in that trajectory's order."""
        first: dict[int, str] = {}
        for index, reading in self.readings:
            first.setdefault(index, reading)
        return first

    @property
    def more_reads(self) -> tuple[str, ...]:
        """The readings in further orders, when the job had fewer trajectories than pooled pages."""
        return tuple(reading for _, reading in self.readings[len(self.reads):])

    @property
    def backers(self) -> tuple[int, ...]:
        """Trajectories that gave the winning answer (none when the judge's own answer won)."""
        return self.groups[0].members if self.groups and self.groups[0].answer == self.answer else ()


def tally(results: Sequence[TrajectoryResult], answers: Mapping[int, str] | None = None) -> tuple[Group, ...]:
    """Groups of equal normalised answers, largest first, ties by summed confidence. `answers` (trajectory index →
    answer) replaces the trajectories' own answers, e.g. with their shortened forms. HTML entities are unescaped:
    an answer copied from an escaped title or snippet ("Tunnels &amp; Trolls") is the same answer, written plainly."""
    return _grouped(results, [(r.index, (answers or {}).get(r.index, r.answer)) for r in results])


def _grouped(results: Sequence[TrajectoryResult], ballots: Iterable[tuple[int, str]]) -> tuple[Group, ...]:
    """Groups of equal normalised ballots, each (trajectory index, answer), largest first; a trajectory that casts
    several ballots for one answer (the readings of a job of fewer trajectories than pages) is a member once per
    ballot."""
    confidence = {r.index: r.confidence for r in results}
    cast: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for index, answer in ballots:
        written = plain_answer(answer)
        if key := vote_key(written):
            cast[key].append((index, written))
    groups = []
    for key, votes in cast.items():
        forms = [written for _, written in votes]
        common = max(forms, key=lambda f: (forms.count(f), -len(f)))  # most common, then shortest
        groups.append(Group(key=key, answer=common, members=tuple(index for index, _ in votes),
                            confidence=sum(confidence[index] for index, _ in votes)))
    return _ranked(groups)


def agreeing(results: Sequence[TrajectoryResult], k: int, question: str = "") -> Group | None:
    """The group that k trajectories already agree on, if any (early stop in answer mode), grouped as the vote
    groups unshortened answers: by the option of the question they name, a surname with its full name, a sentence
    with the short answer it holds; an answer the vote counts as none (the question restated, a bare "yes" to a
    "who" question) agrees with nothing (seen: six trajectories "agreed" on the game the question names, and the
    job stopped early with no answer)."""
    answers = as_options(question, cut_by_rule(question, results)[0])
    groups = folded(tally(results, answers), question)
    return groups[0] if groups and len(groups[0].members) >= k else None


async def vote(question: str, results: Sequence[TrajectoryResult], backend: LLMBackend | None,
               sampling: Sampling = Sampling(), prefix_key: str | None = None,
               min_majority: int = MIN_MAJORITY, read_on_majority: bool = False,
               fetched: Mapping[str, str] | None = None, room: PromptRoom = PromptRoom()) -> Vote:
    """`fetched`: evidence.fetched_texts(results), when the caller has it already; `room`: what the shortening and
    the judge's prompts may hold."""
    decided = await _decided(question, results, backend, sampling, prefix_key, min_majority, read_on_majority, room)
    texts = fetched if fetched is not None else fetched_texts(results)
    return _spelled_as_sources(decided, texts.values())


async def _decided(question: str, results: Sequence[TrajectoryResult], backend: LLMBackend | None,
                   sampling: Sampling, prefix_key: str | None, min_majority: int, read_on_majority: bool,
                   room: PromptRoom) -> Vote:
    shortened, usage = await shorten_answers(question, results, backend, sampling, prefix_key, room)
    answers = as_options(question, shortened)
    groups = folded(tally(results, answers), question)
    outright = groups and _has_majority(groups, min_majority) and not (read_on_majority and len(results) > 1)
    if backend is None or outright:
        return _group_won(groups[0], groups, results, usage) if groups else Vote("", 0.0, (), usage=usage)
    # No majority (or readings vote beside one), or no answer at all: the judge reads the job's best pages, once per
    # trajectory and at least once per page (nothing fetched, nothing to read).
    judge = Judge(question, backend, sampling, prefix_key, room)
    readings = tuple(await judge.read_each(results, shortened))  # an answer's own words find its pages
    read = folded(_grouped(results, [(index, as_option(question, r)) for index, r in readings]), question)
    first_read = as_option(question, readings[0][1]) if readings else ""
    ballots = ballots_winner(groups, read, first_read, min_majority)
    judged = True
    if ballots is not None:
        verdict, backers, judged = ballots
        passages = pooled_passages(question, [r for r in results if r.index in backers], [verdict], k=JUDGE_PASSAGES)
    else:  # a tie of ballots: the reading of the pooled pages in rank order, already asked
        passages = judge.pooled
        verdict = await judge.answer(passages)
    verdict = as_option(question, verdict)
    if not verdict and not groups:  # no trajectory answered: the first reading that did answer, if any
        verdict = next((as_option(question, r) for _, r in readings if r), "")
    usage = usage + judge.usage
    if not verdict:  # a failed or empty judge must not fail the job: the vote's order stands
        return (_group_won(groups[0], groups, results, usage, readings=readings) if groups
                else Vote("", 0.0, (), usage=usage, readings=readings))
    same = _same_group(question, verdict, groups)
    if same is not None and ballots is not None and not _adds_nothing(same.answer, verdict):
        same = None  # the ballots chose this answer, not one that says more (seen: four readings' "World War II"
        # handed to a lone trajectory's "World War I and World War II"); "It was 1887" is still "1887"
    if same is not None:
        return _group_won(same, groups, results, usage, judged=judged, readings=readings)
    needle = f" {normalize_answer(verdict)} "
    containing = tuple(p.url for p in passages if needle in f" {normalize_answer(p.text)} ")
    return Vote(answer=verdict, agreement=0.0, groups=groups, judged=True, usage=usage,
                cited=containing or tuple(p.url for p in passages), readings=readings)


def _spelled_as_sources(decided: Vote, texts: Iterable[str]) -> Vote:
    """The winning answer (and its group) in the form the fetched pages write most (normalize.as_sources_write)."""
    if not decided.answer:
        return decided
    spelled = as_sources_write(decided.answer, texts)
    if spelled == decided.answer:
        return decided
    groups = tuple(replace(g, answer=spelled) if g.answer == decided.answer else g for g in decided.groups)
    return replace(decided, answer=spelled, groups=groups)


def _adds_nothing(answer: str, to: str) -> bool:
    """Every word of `answer`, joining words aside, is a word of `to`: "1887" adds nothing to "It was 1887", "World
    War I and World War II" adds "I" to "World War II"."""
    return set(normalize_answer(answer).split()) - JOINING <= set(normalize_answer(to).split())


def _same_group(question: str, verdict: str, groups: Sequence[Group]) -> Group | None:
    """The trajectories' group the judge's verdict is: the one it overlaps most (SAME_ANSWER_F1 on), unless the
    verdict says more than that group's answer does (seen: seven readings' "Indianapolis Motor Speedway" won the
    ballots, then was handed to three answers "Indianapolis" that it overlaps by half). "It was 1887" is "1887"."""
    scores = [token_f1(verdict, g.answer, restated=question) for g in groups]
    best = max(range(len(groups)), key=lambda i: (scores[i], len(groups[i].members), groups[i].confidence), default=0)
    if not groups or scores[best] < SAME_ANSWER_F1 or says_more(verdict, groups[best].answer, question):
        return None
    return groups[best]


def folded(groups: Sequence[Group], question: str) -> tuple[Group, ...]:
    """Groups that are one answer written two ways merged: to a "who" question a surname into the full name (to
    others "Washington" may be a state, not George Washington), then sentences into the short answer they hold
    (after the surnames: "Phil Spector wrote it" holds "spector" and "phil spector")."""
    return fold_sentences(fold_surnames(groups) if asks_who(question) else groups)


def fold_surnames(groups: Sequence[Group]) -> tuple[Group, ...]:
    """A one-word answer that is the last word of exactly one longer short answer joins it, written in full: seen,
    "Spector" (5 trajectories) beside "Phil Spector" (1). Numbers stay apart ("1974" is not "1969 until 1974"), and
    so does a first word ("Indianapolis" is not "Indianapolis Motor Speedway")."""
    merged = {g.key: g for g in groups}
    hosts = [g for g in groups if len(g.key.split()) > 1 and is_short(g.answer)]
    for group in groups:
        if " " in group.key or not group.key.isalpha():
            continue
        ends = [h for h in hosts if h.key.split()[-1] == group.key]
        if len(ends) != 1:
            continue
        host = merged[ends[0].key]
        merged[host.key] = Group(key=host.key, answer=host.answer, members=host.members + group.members,
                                 confidence=host.confidence + group.confidence)
        del merged[group.key]
    return _ranked(list(merged.values()))


def fold_sentences(groups: Sequence[Group]) -> tuple[Group, ...]:
    """Each long answer that contains exactly one of the short answers (as whole words) joins that answer's group."""
    hosts = {g.key: g for g in groups if is_short(g.answer)}
    apart = []
    for group in groups:
        if group.key in hosts:
            continue
        inside = [key for key in hosts if f" {key} " in f" {group.key} "]
        if len(inside) != 1:
            apart.append(group)
            continue
        host = hosts[inside[0]]
        hosts[host.key] = Group(key=host.key, answer=host.answer, members=host.members + group.members,
                                confidence=host.confidence + group.confidence)
    return _ranked([*hosts.values(), *apart])


def ballots_winner(answered: Sequence[Group], read: Sequence[Group], first_read: str, min_ballots: int,
                   ) -> tuple[str, frozenset[int], bool] | None:
    """The answer with the most ballots (each trajectory casts its answer and the readings of its pages), the
    trajectories behind it, and whether a reading is among its ballots; None with fewer than `min_ballots`.
    On a tie for the most, the tied answer with the most readings, when the reading in rank order (`first_read`,
    which decides ties) is none of the tied answers and one of them has more readings than the others (seen at
    n=8: "Tupolev", "Hour of Bewilderbeast" and "English Electric Canberra" tied at three ballots, the last all
    readings, and the rank-order reading "Badly Drawn Boy", one ballot, won); else None."""
    ballots = _ballots(answered, read)
    count = ballots[0]
    most = max(count.values(), default=0)
    tied = [key for key in count if count[key] == most]
    if most < min_ballots:
        return None
    if len(tied) == 1:
        return _cast_for(tied[0], ballots, read)
    if vote_key(plain_answer(first_read)) in tied:
        return None
    readings = {g.key: len(g.members) for g in read}
    tied.sort(key=lambda key: -readings.get(key, 0))
    if readings.get(tied[0], 0) == readings.get(tied[1], 0):
        return None
    return _cast_for(tied[0], ballots, read)


def _ballots(answered: Sequence[Group], read: Sequence[Group],
             ) -> tuple[dict[str, int], dict[str, str], dict[str, set[int]]]:
    """Ballots per answer key, its written form and the trajectories behind it."""
    count: dict[str, int] = defaultdict(int)
    written: dict[str, str] = {}
    backers: dict[str, set[int]] = defaultdict(set)
    for group in (*read, *answered):  # an answer's written form wins over a reading's
        count[group.key] += len(group.members)
        written[group.key] = group.answer
        backers[group.key].update(group.members)
    return count, written, backers


def _cast_for(key: str, ballots: tuple[dict[str, int], dict[str, str], dict[str, set[int]]],
              read: Sequence[Group]) -> tuple[str, frozenset[int], bool]:
    """The answer of `key` as written, the trajectories behind it, and whether a reading is among its ballots."""
    _, written, backers = ballots
    return written[key], frozenset(backers[key]), any(g.key == key for g in read)


def _ranked(groups: Sequence[Group]) -> tuple[Group, ...]:
    """Largest first, ties by summed confidence."""
    return tuple(sorted(groups, key=lambda g: (-len(g.members), -g.confidence, g.key)))


def _has_majority(groups: Sequence[Group], min_majority: int) -> bool:
    """The first group holds more than half of the answers, and at least `min_majority` of them."""
    top = len(groups[0].members)
    return top >= min_majority and 2 * top > sum(len(g.members) for g in groups)


def _group_won(winner: Group, groups: Sequence[Group], results: Sequence[TrajectoryResult], usage: Usage,
               judged: bool = False, readings: tuple[tuple[int, str], ...] = ()) -> Vote:
    answered = sum(len(g.members) for g in groups)
    return Vote(answer=winner.answer, agreement=len(winner.members) / answered,
                groups=(winner, *[g for g in groups if g is not winner]), judged=judged, usage=usage,
                cited=_cited_by(winner, results), readings=readings)


def _cited_by(group: Group, results: Sequence[TrajectoryResult]) -> tuple[str, ...]:
    by_index = {r.index: r for r in results}
    return tuple(dict.fromkeys(s.url for i in group.members for s in by_index[i].cited))
