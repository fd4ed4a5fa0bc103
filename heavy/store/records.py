"""A job as stored in its Redis hash, and its statuses."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

AWAITING_APPROVAL, QUEUED, RUNNING, AGGREGATING = "awaiting_approval", "queued", "running", "aggregating"
DONE, PARTIAL, FAILED, CANCELLED = "done", "partial", "failed", "cancelled"
ACTIVE = (AWAITING_APPROVAL, QUEUED, RUNNING, AGGREGATING)
TERMINAL = (DONE, PARTIAL, FAILED, CANCELLED)
MOST_TRAJECTORIES = 8  # a job without resolved parameters may still have this many checkpoints
STATUSES = ACTIVE + TERMINAL
# The terminal events of a job's stream: an SSE follower stops after one of these.
TERMINAL_EVENTS = ("report_ready", "job_failed", "job_cancelled")


def _float(value: str | None) -> float | None:
    return float(value) if value else None


@dataclass(frozen=True)
class JobRecord:
    id: str
    tenant: str
    status: str
    question: str
    mode: str
    params: dict[str, Any]
    created: float
    updated: float
    review: bool = False
    plan: dict[str, Any] | None = None
    approve_by: float | None = None  # a job held for review is cancelled unless approved by then
    started: float | None = None
    finished: float | None = None
    error: str = ""
    attempts: int = 0
    stops: int = 0  # attempts that ended because their worker was stopped on purpose (SIGTERM), not by a death
    worker: str = ""
    control: str = ""  # "" | "cancel" | "finish": a request the running worker honours
    events: int = 0  # events written so far (the last sequence number)
    tokens: int = 0
    cost_usd: float | None = None  # what its tokens cost at the deployment's prices, once ended (None: not known)
    token_grant: int = 0  # tokens reserved for it on its tenant while it runs (0: a job from before grants)
    # what earlier attempts spent that no checkpoint holds (their aggregations: kept after each call, and a worker's
    # stop adds the calls it cut), as Usage's fields
    earlier_usage: dict[str, int] = field(default_factory=dict)
    stop_reason: str = ""
    callback_url: str = ""  # POSTed when the job ends (heavy/webhooks.py)
    callback_secret: str = field(default="", repr=False)  # signs that POST; never shown, nor in a repr a log prints
    callback_status: str = ""  # how that POST went

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def trajectories(self) -> int:
        """How many trajectories the job runs (checkpoints it may have): its resolved parameters say."""
        return int(self.params.get("trajectories", MOST_TRAJECTORIES))

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> JobRecord:
        return cls(
            id=data["id"], tenant=data["tenant"], status=data["status"], question=data["question"],
            mode=data["mode"], params=json.loads(data.get("params") or "{}"), created=float(data["created"]),
            updated=float(data.get("updated") or data["created"]), review=data.get("review") == "1",
            plan=json.loads(data["plan"]) if data.get("plan") else None, approve_by=_float(data.get("approve_by")),
            started=_float(data.get("started")),
            finished=_float(data.get("finished")), error=data.get("error", ""),
            attempts=int(data.get("attempts") or 0), stops=int(data.get("stops") or 0), worker=data.get("worker", ""),
            control=data.get("control", ""),
            events=int(data.get("events") or 0), tokens=int(data.get("tokens") or 0),
            cost_usd=_float(data.get("cost_usd")),
            token_grant=int(data.get("token_grant") or 0),
            earlier_usage=json.loads(data.get("earlier_usage") or "{}"),
            stop_reason=data.get("stop_reason", ""), callback_url=data.get("callback_url", ""),
            callback_secret=data.get("callback_secret", ""), callback_status=data.get("callback_status", ""),
        )

    def links(self, root_path: str = "") -> dict[str, str]:
        """Where the API serves the job, its events and its report (under `root_path`, where a proxy mounts it)."""
        base = f"{root_path}/v1/jobs/{self.id}"
        return {"self": base, "events": f"{base}/events", "report": f"{base}/report"}

    def public(self) -> dict[str, Any]:
        """What the API shows a tenant (no worker internals beyond the attempt count)."""
        return {
            "id": self.id, "status": self.status, "question": self.question, "mode": self.mode,
            "params": self.params, "review": self.review, "plan": self.plan, "approve_by": self.approve_by,
            "created_at": self.created,
            "updated_at": self.updated, "started_at": self.started, "finished_at": self.finished,
            "error": self.error or None, "attempts": self.attempts, "events": self.events, "tokens": self.tokens,
            "cost_usd": self.cost_usd,
            "stop_reason": self.stop_reason or None, "control": self.control or None,
            "callback_url": self.callback_url or None, "callback_status": self.callback_status or None,
        }
