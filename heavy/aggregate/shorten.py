"""Short answers for the vote: a weak model often answers with a sentence ("The band was formed in 1994 in
Leeds."), and sentences that say the same thing never compare equal. Long answers are cut down to the phrase that
answers the question by one small LLM call each, run concurrently; short ones are kept as written."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from heavy.agent.steps import TrajectoryResult
from heavy.llm.types import LLMBackend, LLMError, Sampling, Usage

log = logging.getLogger(__name__)

SHORT_WORDS = 5  # answers up to this many words are already short
SHORTEN_TOKENS = 24

SHORTEN_PROMPT = """Question: {question}
Answer: {answer}

Rewrite this answer as the shortest phrase that answers the question: a name, a date, a number, a place, \
or yes/no. Reply with the phrase only."""


def is_short(answer: str) -> bool:
    return len(answer.split()) <= SHORT_WORDS


def _first_line(text: str) -> str:
    line = next((ln.strip() for ln in text.strip().splitlines() if ln.strip()), "")
    return line.strip(" .*`\"'")


async def shorten_answers(question: str, results: Sequence[TrajectoryResult], backend: LLMBackend | None,
                          sampling: Sampling = Sampling()) -> tuple[dict[int, str], Usage]:
    """Trajectory index → the answer to vote with. Without a backend, or when a call fails, the answer stays."""
    short = {r.index: r.answer.strip() for r in results}
    long = [r for r in results if r.answered and not is_short(r.answer)]
    if backend is None or not long:
        return short, Usage()

    async def one(result: TrajectoryResult) -> tuple[int, str, Usage]:
        prompt = SHORTEN_PROMPT.format(question=question, answer=" ".join(result.answer.split()))
        try:
            completion = await backend.chat([{"role": "user", "content": prompt}], None, sampling,
                                            max_tokens=SHORTEN_TOKENS, request_id=f"shorten:{result.index}")
        except LLMError as exc:  # the long answer still votes
            log.warning("shortening trajectory %d's answer failed: %s", result.index, exc)
            return result.index, result.answer.strip(), Usage()
        return result.index, _first_line(completion.content) or result.answer.strip(), completion.usage

    usage = Usage()
    for index, answer, used in await asyncio.gather(*(one(r) for r in long)):
        short[index] = answer
        usage = usage + used
    return short, usage
