"""The outcome of a job: Markdown report plus the JSON beside it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from heavy.agent.steps import TrajectoryResult
from heavy.llm.types import Usage
from heavy.tools.base import Source


@dataclass(frozen=True)
class JobResult:
    job_id: str
    question: str
    mode: str
    status: str  # done | partial | cancelled | failed
    answer: str
    agreement: float
    markdown: str
    sources: tuple[Source, ...]  # numbered 1..n as cited in `markdown`
    trajectories: tuple[TrajectoryResult, ...]
    usage: Usage  # trajectories + aggregation
    cost_usd: float = 0.0
    stop_reason: str = "all_done"
    dropped_claims: tuple[str, ...] = ()  # report mode: claims taken out, by the word check or the model's
    refuted_claims: tuple[str, ...] = ()  # those of them the model's claim check said no to (HEAVY_CHECK_CLAIMS)
    report_error: str = ""  # report mode: why the report pass wrote no findings (its request failed, or was cut)
    votes: dict[str, int] = field(default_factory=dict)
    reads: dict[int, str] = field(default_factory=dict)  # answer mode: the judge's reading of each trajectory's pages
    more_reads: tuple[str, ...] = ()  # answer mode: its readings in further orders (fewer trajectories than pages)

    @property
    def partial(self) -> bool:
        return self.status == "partial"

    def to_dict(self) -> dict:
        return {
            "job_id": self.job_id,
            "question": self.question,
            "mode": self.mode,
            "status": self.status,
            "partial": self.partial,
            "stop_reason": self.stop_reason,
            "answer": self.answer,
            "agreement": self.agreement,
            "votes": self.votes,
            "reads": {str(index): read for index, read in self.reads.items()},
            "more_reads": list(self.more_reads),
            "sources": [
                {"n": n, "url": s.url, "title": s.title, "fetched_at": s.fetched_at, "content_hash": s.content_hash}
                for n, s in enumerate(self.sources, start=1)
            ],
            "trajectories": [t.summary() for t in self.trajectories],
            "dropped_claims": list(self.dropped_claims),
            "refuted_claims": list(self.refuted_claims),
            "report_error": self.report_error,
            "tokens": {
                "prompt": self.usage.prompt_tokens,
                "cached_prompt": self.usage.cached_prompt_tokens,
                "completion": self.usage.completion_tokens,
                "total": self.usage.total_tokens,
            },
            "cost_usd": self.cost_usd,
            "markdown": self.markdown,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=2)
