"""Request and response bodies of the REST API (what /docs shows)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from heavy.config import Settings

ToolName = Literal["search", "open_page", "python"]


class JobCreate(BaseModel):
    # strict: JSON of the wrong type is a 422, not coerced (`"trajectories": true` is no count of 1)
    model_config = ConfigDict(extra="forbid", strict=True)

    question: str = Field(min_length=1, max_length=4000, description="what to research")
    mode: Literal["report", "answer"] | None = Field(None, description="report (cited Markdown) or answer (vote); "
                                                     "default the deployment's HEAVY_MODE")
    trajectories: int | None = Field(None, ge=1, le=8, description="parallel trajectories (default 8)")
    max_steps: int | None = Field(None, ge=1, le=300, description="steps per trajectory")
    step_tokens: int | None = Field(None, ge=16, le=32_768, description="completion tokens per step")
    trajectory_tokens: int | None = Field(None, ge=256, le=10_000_000, description="tokens per trajectory")
    job_tokens: int | None = Field(None, ge=256, le=100_000_000, description="tokens for the whole job")
    deadline_s: float | None = Field(None, gt=0, le=86_400, description="wall-clock budget of the job")
    tools: list[ToolName] | None = Field(None, description="tools the trajectories may use (default: all configured)")
    review: bool = Field(False, description="wait in awaiting_approval with a plan and estimate until approved")
    priority: int = Field(0, ge=-10, le=10, description="of the job's model requests on a shared runtime: lower is "
                                                         "served first (an interactive job before a batch one)")
    callback_url: str | None = Field(None, max_length=2048, description="an http(s) URL to POST the job to when "
                                     "it ends (public addresses only, unless the deployment allows others)")
    callback_secret: str | None = Field(None, min_length=16, max_length=256, repr=False,
                                        description="signs the callback: "
                                        "X-Heavy-Signature: sha256=<HMAC-SHA256 of the body with this secret>, and "
                                        "X-Heavy-Signature-Timestamped: sha256=<HMAC-SHA256 of "
                                        "'<X-Heavy-Timestamp>.<body>'> (docs/webhooks.md)")

    @field_validator("question")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("question is blank")
        return value.strip()

    @field_validator("callback_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL as exc:
            raise ValueError(f"not a URL: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an http:// or https:// URL with a host")
        if url.userinfo:
            raise ValueError("must not carry credentials (sign it with callback_secret instead)")
        return value

    @model_validator(mode="after")
    def _secret_needs_url(self) -> JobCreate:
        if self.callback_secret and not self.callback_url:
            raise ValueError("callback_secret signs the callback: give callback_url too")
        return self

    @field_validator("tools")
    @classmethod
    def _unique(cls, value: list[str] | None) -> list[str] | None:
        return sorted(set(value)) if value is not None else None

    def fingerprint(self) -> str:
        """Identifies the request body for idempotent resubmission."""
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()[:32]

    def resolve(self, settings: Settings) -> dict[str, Any]:
        """The job's parameters with the deployment's defaults filled in; ValueError when they do not fit."""
        params = {
            "trajectories": self.trajectories or settings.trajectories,
            "max_steps": self.max_steps or settings.max_steps,
            "step_tokens": self.step_tokens or settings.step_tokens,
            "trajectory_tokens": self.trajectory_tokens or settings.trajectory_tokens,
            "job_tokens": self.job_tokens or settings.job_tokens,
            "deadline_s": self.deadline_s or settings.job_deadline_s,
            "tools": self.tools if self.tools is not None else sorted(settings.allowed_tools),
            "priority": self.priority,
        }
        if params["step_tokens"] + settings.reasoning_tokens >= settings.context_tokens:
            room = f" less the reasoning room ({settings.reasoning_tokens})" if settings.reasoning_tokens else ""
            raise ValueError(f"step_tokens must be < the context window ({settings.context_tokens}){room}")
        if params["step_tokens"] > params["trajectory_tokens"]:
            raise ValueError("step_tokens must be <= trajectory_tokens")
        return params


def plan_for(question: str, mode: str, params: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """What a review-gated job will do and its worst-case token use and cost, shown before approval."""
    max_tokens = min(params["job_tokens"], params["trajectories"] * params["trajectory_tokens"])
    # Prompts dominate an agent's tokens; the split is a planning figure, the cap above is the hard limit.
    prompt, completion = int(max_tokens * 0.9), max_tokens - int(max_tokens * 0.9)
    cost = (prompt * settings.price_per_mtok_prompt + completion * settings.price_per_mtok_completion) / 1e6
    tools = ", ".join(params["tools"]) or "no tools"
    return {
        "steps": [
            f"{params['trajectories']} independent trajectories research the question with {tools}, "
            f"up to {params['max_steps']} steps each",
            "the aggregator " + ("votes on their answers" if mode == "answer" else
                                 "writes one cited report from their findings"),
        ],
        "max_tokens": max_tokens,
        "max_cost_usd": round(cost, 4),
        "deadline_s": params["deadline_s"],
    }


class JobPublic(BaseModel):
    id: str
    status: str
    question: str
    mode: str
    params: dict[str, Any]
    review: bool
    plan: dict[str, Any] | None = None
    approve_by: float | None = Field(None, description="a job held for review is cancelled unless approved by then")
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    attempts: int
    events: int = Field(description="events written so far: the last event id")
    tokens: int
    cost_usd: float | None = Field(None, description="what its tokens cost at the deployment's prices (HEAVY_PRICE_"
                                                     "PER_MTOK_*), once it ended; a cancelled job's too")
    stop_reason: str | None = None
    control: str | None = Field(None, description="a pending cancel or finish request")
    callback_url: str | None = Field(None, description="POSTed the job's state when it ends")
    callback_status: str | None = Field(None, description="how that POST went")
    links: dict[str, str]


class JobList(BaseModel):
    jobs: list[JobPublic]
    total: int
    offset: int = Field(description="how many jobs of the list come before the page's first (0: it starts at the "
                                    "newest), as the page was read")
    limit: int
    links: dict[str, str] = Field(description="`self`, this page's URL; `next`, the next page's while jobs follow; "
                                              "`prev`, the previous page's after the first (the same query at "
                                              "another `cursor`)")


class ReportSource(BaseModel):
    n: int = Field(description="its number, as the report cites it: [n]")
    url: str
    title: str
    fetched_at: float
    content_hash: str = Field(description="sha256 of the text read")


class ReportTokens(BaseModel):
    prompt: int
    cached_prompt: int
    completion: int
    total: int


class Report(BaseModel):
    """A job's result beside its Markdown (heavy/aggregate/result.py writes it). Fields added since are optional:
    reports stored before them lack them."""

    model_config = ConfigDict(extra="allow")

    job_id: str
    question: str
    mode: str
    status: str = Field(description="done or partial")
    partial: bool
    stop_reason: str
    answer: str
    agreement: float = Field(description="the share of trajectories that gave the answer")
    votes: dict[str, int]
    reads: dict[str, str] = Field({}, description="answer mode: the judge's reading of each trajectory's pages")
    more_reads: list[str] = Field([], description="answer mode: its readings in further orders")
    sources: list[ReportSource]
    trajectories: list[dict[str, Any]]
    dropped_claims: list[str] = Field(description="report mode: the claims the checks took out")
    refuted_claims: list[str] = Field([], description="those of them the model's claim check refuted")
    report_error: str = Field("", description="report mode: why the report pass wrote no findings (the report is "
                                              "then partial)")
    tokens: ReportTokens
    cost_usd: float
    markdown: str


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    redis: str | None = Field(None, description="that the job store is unreachable (its error is in the API's log)")


class Version(BaseModel):
    version: str = Field(description="heavy's version, as `heavy --version` prints it")


class InvalidField(BaseModel):
    loc: list[str | int] = Field(description="where: body, query, path or header, then the field's path")
    msg: str
    type: str


class ErrorDetail(BaseModel):
    code: str = Field(description="not_found, unauthorized, invalid_request, quota_exceeded, ... for a program")
    message: str = Field(description="for a person")
    details: list[InvalidField] | None = Field(None, description="every invalid part of a request refused with 422")


class ErrorBody(BaseModel):
    error: ErrorDetail
