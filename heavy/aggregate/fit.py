"""What the aggregator's prompts may hold: the context less each call's completion (its own max_tokens and a thinking
model's reasoning room). The source text a prompt carries (the report pass's excerpts, the judge's passages, the
claim check's passage, the answer being shortened) is cut to fit; the question and the instructions never are.
Tokens are estimated as a trajectory's prompt is (heavy/agent/context.py: 3 characters a token, on the safe side),
scaled to what the server counted for the job's requests (Chinese counts 1.9 times the estimate)."""

from __future__ import annotations

from dataclasses import dataclass

from heavy.agent.context import CHARS_PER_TOKEN, MESSAGE_OVERHEAD_TOKENS

DEFAULT_CONTEXT_TOKENS = 8192  # HEAVY_CONTEXT_TOKENS' default


@dataclass(frozen=True)
class PromptRoom:
    context_tokens: int = DEFAULT_CONTEXT_TOKENS  # the job's (HEAVY_CONTEXT_TOKENS, or the server's if smaller)
    reasoning_tokens: int = 0  # what the aggregator's backend adds to each call's max_tokens (llm/adjusted.py)
    counted_per_estimated: float = 1.0  # the server's prompt tokens per estimated one (the job's: agent/budget.py)

    def source_chars(self, max_tokens: int, rest: str, messages: int = 1) -> int:
        """Characters of source text a prompt may carry beside `rest` (all its other text, in `messages` messages)
        for a call asking `max_tokens`; 0 when the rest alone fills the room."""
        room = (self.context_tokens - max_tokens - self.reasoning_tokens) / self.counted_per_estimated
        prompt_tokens = int(room) - MESSAGE_OVERHEAD_TOKENS * messages
        return max(0, prompt_tokens * CHARS_PER_TOKEN - len(rest))

    def fitted(self, source: str, max_tokens: int, rest: str, messages: int = 1) -> str:
        """`source` cut at its end to what the prompt may carry."""
        return source[: self.source_chars(max_tokens, rest, messages)]
