"""How the aggregator works for one job: report size, the sources its prompt shows, prices, answer mode's vote,
the claim checks, and the room its model requests have (context, a thinking model's reasoning)."""

from __future__ import annotations

from dataclasses import dataclass

from heavy.agent.context import CHARS_PER_TOKEN
from heavy.aggregate.fit import DEFAULT_CONTEXT_TOKENS, PromptRoom
from heavy.aggregate.vote import MIN_MAJORITY
from heavy.config import Settings
from heavy.llm.types import Sampling, Usage


@dataclass(frozen=True)
class AggregationConfig:
    report_tokens: int = 768
    source_excerpt_chars: int = 300
    prompt_source_chars: int = 6000  # how much source text the report prompt may carry
    report_sources: int = 6  # the most relevant sources the report prompt shows
    price_per_mtok_prompt: float = 0.0
    price_per_mtok_completion: float = 0.0
    sampling: Sampling = Sampling(temperature=0.0)
    min_majority: int = MIN_MAJORITY  # answer mode: fewer agreeing trajectories go to the judge (1: a lone one stands)
    read_on_majority: bool = False  # answer mode: the judge's readings vote even beside a majority (jobs of n > 1)
    check_claims: bool = True  # report mode: the model weighs each kept claim against its negation (claim_check.py)
    reasoning_tokens: int = 0  # added to each of the aggregator's model requests: a thinking model reasons first
    context_tokens: int = DEFAULT_CONTEXT_TOKENS  # each request's prompt and completion fit it (fit.py)
    counted_per_estimated: float = 1.0  # the job's, when its requests have shown it (fit.py)

    def __post_init__(self) -> None:
        if min(self.source_excerpt_chars, self.prompt_source_chars, self.report_sources) < 1 or self.report_tokens < 16:
            raise ValueError("report_tokens >= 16; source_excerpt_chars, prompt_source_chars and report_sources >= 1 "
                             "required")
        if self.reasoning_tokens < 0:
            raise ValueError(f"reasoning_tokens must be >= 0, got {self.reasoning_tokens}")
        if self.min_majority < 1:
            raise ValueError(f"min_majority must be >= 1, got {self.min_majority}")

    @property
    def room(self) -> PromptRoom:
        return PromptRoom(self.context_tokens, self.reasoning_tokens, self.counted_per_estimated)

    def cost_usd(self, usage: Usage) -> float:
        return (usage.prompt_tokens * self.price_per_mtok_prompt
                + usage.completion_tokens * self.price_per_mtok_completion) / 1e6

    @property
    def reserve_tokens(self) -> int:
        """What a job keeps of its grant from its trajectories for the aggregation: one report pass over a full
        prompt (its completion, reasoning room and the source text the prompt may carry). The aggregator's other
        calls (judge, shortening, claim checks) spend what the trajectories left, and go without when none is left."""
        return self.report_tokens + self.reasoning_tokens + self.prompt_source_chars // CHARS_PER_TOKEN

    @classmethod
    def from_settings(cls, settings: Settings) -> AggregationConfig:
        """The service's `HEAVY_*` settings, for every way a job runs (the worker and `heavy ask`)."""
        return cls(report_tokens=settings.report_tokens, report_sources=settings.report_sources,
                   price_per_mtok_prompt=settings.price_per_mtok_prompt,
                   price_per_mtok_completion=settings.price_per_mtok_completion, min_majority=settings.min_majority,
                   read_on_majority=settings.read_on_majority, check_claims=settings.check_claims,
                   reasoning_tokens=settings.reasoning_tokens, context_tokens=settings.context_tokens)
