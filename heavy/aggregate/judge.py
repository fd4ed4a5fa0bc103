"""The judge: one short LLM answer read off a few fetched pages, without the trajectories' candidates in view.

Measured on the embedded model, a list of candidates anchors it to a wrong one far more often than it helps. The
same call serves two readings: each trajectory's own pages (a second reading of what that trajectory found, one per
trajectory, so eight trajectories give eight readings) and the pages of all trajectories pooled.
"""

from __future__ import annotations

import asyncio
import html
import logging
from collections import Counter
from collections.abc import Mapping, Sequence

from heavy.agent.steps import TrajectoryResult, answer_line
from heavy.aggregate.evidence import Passage, pooled_passages
from heavy.aggregate.shorten import is_short, not_an_answer, shorten_one
from heavy.llm.types import LLMBackend, LLMError, Sampling, Usage

log = logging.getLogger(__name__)

JUDGE_TOKENS = 24
JUDGE_PASSAGES = 4

JUDGE_PROMPT = """Passages:
{passages}

Question: {question}

Using only the passages, answer the question with the shortest phrase (a name, a date, a number, a place, or \
yes/no). Reply with the phrase only."""


class Judge:
    """Answers from passages; the same passages are read once."""

    def __init__(self, question: str, backend: LLMBackend, sampling: Sampling, prefix_key: str | None) -> None:
        self.question, self.backend, self.sampling, self.prefix_key = question, backend, sampling, prefix_key
        self.usage = Usage()
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

    async def read_each(self, results: Sequence[TrajectoryResult], answers: Mapping[int, str]) -> dict[int, str]:
        """Trajectory index → what the judge reads off that trajectory's own best pages ("" for none); `answers`
        are the trajectories' (shortened) answers, whose pages rank up. Pages at most half the trajectories fetched
        rank up in the readings of those that did: every trajectory holds the opening search's results, so without
        this most readings read the same four pages and count one reading many times over, and a second hop one
        trajectory found is never read (measured in docs/eval_hotpotqa.md)."""
        indices = [r.index for r in results]
        holders = Counter(url for r in results for url in {s.url for s in r.evidence})
        rare = {url for url, count in holders.items() if 2 * count <= len(results)}
        picked = [pooled_passages(self.question, [r], [answers.get(r.index, r.answer)], k=JUDGE_PASSAGES,
                                  favoured=frozenset(s.url for s in r.evidence if s.url in rare)) for r in results]
        read = await asyncio.gather(*(self.answer(p, f"read:{i}") for i, p in zip(indices, picked, strict=True)))
        return dict(zip(indices, read, strict=True))

    async def _ask(self, passages: Sequence[Passage], request_id: str) -> str:
        listed = "\n".join(f"[{n}] {p.title}: {p.text}" for n, p in enumerate(passages, start=1))
        prompt = JUDGE_PROMPT.format(passages=listed, question=self.question)
        try:
            completion = await self.backend.chat([{"role": "user", "content": prompt}], None, self.sampling,
                                                 max_tokens=JUDGE_TOKENS, request_id=request_id,
                                                 prefix_key=self.prefix_key)
        except LLMError as exc:
            log.warning("the judge's %s call failed: %s", request_id, exc)
            return ""
        self.usage = self.usage + completion.usage
        verdict = html.unescape(answer_line(completion.content))  # passage titles may keep entities
        if verdict and not is_short(verdict):  # seen: the question restated around the answer, as a sentence
            verdict, usage = await shorten_one(self.question, verdict, self.backend, self.sampling, self.prefix_key,
                                               f"shorten:{request_id}")
            self.usage = self.usage + usage
        return "" if not_an_answer(self.question, verdict) else verdict
