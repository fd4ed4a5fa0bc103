"""The judge: one short LLM answer read off a few fetched pages, without the trajectories' candidates in view.

Measured on the embedded model, a list of candidates anchors it to a wrong one far more often than it helps. Each
trajectory gets one reading of the job's best pages, each in another order, so eight trajectories give eight
readings that are not one reading counted eight times; a job of fewer trajectories than pages reads each page first
once. A reading of the same pages in the same order is asked once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

from heavy.agent.steps import TrajectoryResult, answer_line
from heavy.aggregate.evidence import Passage, pooled_passages
from heavy.aggregate.fit import PromptRoom
from heavy.aggregate.normalize import plain_answer
from heavy.aggregate.shorten import asks_number, asks_yes_no, is_short, not_an_answer, shorten_one
from heavy.llm.types import LLMBackend, LLMError, Sampling, Usage

log = logging.getLogger(__name__)

JUDGE_TOKENS = 24
JUDGE_PASSAGES = 4

JUDGE_PROMPT = """Passages:
{passages}

Question: {question}

Using only the passages, answer the question {reply}"""
# The reply the question's kind asks for. Offered "yes/no" beside names, the embedded model answered "Yes" to
# "Who ...?" and "Where ...?" questions even with only the two pages that hold the answer.
REPLY_YES_NO = "with yes or no. Reply with yes or no only."
REPLY_NUMBER = "with the number or the date it asks for. Reply with the number or date only."
REPLY_PHRASE = "with the shortest phrase (a name, a date, a number or a place). Reply with the phrase only."


def reply_format(question: str) -> str:
    """How the judge is told to reply: as the question's kind asks (yes/no, a number or date, else a phrase)."""
    if asks_yes_no(question):
        return REPLY_YES_NO
    return REPLY_NUMBER if asks_number(question) else REPLY_PHRASE


def reading_order(passages: Sequence[Passage], n: int) -> list[Passage]:
    """The n-th order of the passages: rotated to start at the n-th, then (from n = their count on) the same
    rotations reversed, so that up to twice their count of readings each see another order."""
    if not passages:
        return []
    start = n % len(passages)
    order = [*passages[start:], *passages[:start]]
    return order[::-1] if (n // len(passages)) % 2 else order


class Judge:
    """Answers from passages; the same passages are read once."""

    def __init__(self, question: str, backend: LLMBackend, sampling: Sampling, prefix_key: str | None,
                 room: PromptRoom = PromptRoom()) -> None:
        self.question, self.backend, self.sampling, self.prefix_key = question, backend, sampling, prefix_key
        self.room = room
        self.usage = Usage()
        self.pooled: list[Passage] = []  # the job's best pages in rank order, once read_each has pooled them
        self._answered: dict[tuple[str, ...], asyncio.Task] = {}

    async def answer(self, passages: Sequence[Passage], request_id: str = "judge") -> str:
        """The short answer the passages give ("" without passages, when the call fails, or the answer is of the
        wrong kind or restates the question)."""
        if not passages:
            return ""
        key = tuple(p.url for p in passages)
        if key not in self._answered:
            self._answered[key] = asyncio.ensure_future(self._ask(passages, request_id))
        return await self._answered[key]

    async def read_each(self, results: Sequence[TrajectoryResult], answers: Mapping[int, str],
                        ) -> list[tuple[int, str]]:
        """(trajectory index, the judge's reading of the job's best pages) for every reading, "" for none: one per
        trajectory, each in an order of its own, and more when the job has fewer trajectories than pooled pages,
        so each page is read first once (a lone trajectory's pages are read in up to four orders); reading n
        belongs to trajectory n mod N. `answers` are the trajectories' (shortened) answers, whose pages rank up.
        A small model answers from the page it reads first, so readings of the same pages in one order repeat one
        mistake, while in different orders they agree only on what the pages say (measured by
        scripts/bench_reading.py: eight orders voted beat one reading, and beat each trajectory reading its own
        pages in rank order; on a fresh one-trajectory run of all 49 HotpotQA questions, four orders voted with
        the trajectory's answer beat the one reading in rank order, docs/eval_hotpotqa.md). Reading 0 is in
        rank order."""
        self.pooled = pooled_passages(self.question, results, [answers.get(r.index, r.answer) for r in results],
                                      k=JUDGE_PASSAGES)
        indices = [r.index for r in results]
        owners = [indices[n % len(indices)] for n in range(max(len(indices), len(self.pooled)))]
        read = await asyncio.gather(*(self.answer(reading_order(self.pooled, n), f"read:{n}")
                                      for n in range(len(owners))))
        return list(zip(owners, read, strict=True))

    async def _ask(self, passages: Sequence[Passage], request_id: str) -> str:
        listed = "\n".join(f"[{n}] {p.title}: {p.text}" for n, p in enumerate(passages, start=1))
        rest = JUDGE_PROMPT.format(passages="", question=self.question, reply=reply_format(self.question))
        prompt = JUDGE_PROMPT.format(passages=self.room.fitted(listed, JUDGE_TOKENS, rest), question=self.question,
                                     reply=reply_format(self.question))
        try:
            completion = await self.backend.chat([{"role": "user", "content": prompt}], None, self.sampling,
                                                 max_tokens=JUDGE_TOKENS, request_id=request_id,
                                                 prefix_key=self.prefix_key)
        except LLMError as exc:
            log.warning("the judge's %s call failed: %s", request_id, exc)
            return ""
        self.usage = self.usage + completion.usage
        verdict = plain_answer(answer_line(completion.content))  # passage titles may keep entities
        if verdict and not is_short(verdict):  # seen: the question restated around the answer, as a sentence
            verdict, usage = await shorten_one(self.question, verdict, self.backend, self.sampling, self.prefix_key,
                                               f"shorten:{request_id}", self.room)
            self.usage = self.usage + usage
        return "" if not_an_answer(self.question, verdict) else verdict
