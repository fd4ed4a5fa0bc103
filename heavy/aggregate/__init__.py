"""Merging N trajectories: answer-mode vote (LLM judge on ties), report-mode cited Markdown, the JSON result."""

from heavy.aggregate.config import AggregationConfig
from heavy.aggregate.normalize import normalize_answer
from heavy.aggregate.report import REPORT_REQUEST, aggregate
from heavy.aggregate.result import JobResult
from heavy.aggregate.vote import Vote, agreeing, tally, vote

__all__ = ["REPORT_REQUEST", "AggregationConfig", "JobResult", "Vote", "aggregate", "agreeing", "normalize_answer",
           "tally", "vote"]
