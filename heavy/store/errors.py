"""Typed failures of the job store; the API maps each to an HTTP status with a JSON body."""

from __future__ import annotations


class StoreError(Exception):
    """Base of every job-store failure."""


class JobNotFound(StoreError):
    """No such job for this tenant (another tenant's job is reported the same way)."""


class QuotaExceeded(StoreError):
    """The tenant is at one of its limits (concurrent jobs, tokens, jobs held for review, open event streams);
    `retry_after_s`: when to try again (when it would succeed if that is known, else a bound)."""

    def __init__(self, limit: str, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.limit, self.retry_after_s = limit, retry_after_s


class IdempotencyConflict(StoreError):
    """An Idempotency-Key was reused with a different request body."""


class InvalidTransition(StoreError):
    """The job's status does not allow this action (e.g. approving a running job)."""


class JobTakenOver(InvalidTransition):
    """Another worker holds the job now: this one's lease ran out while it stalled, and its run must not end it."""


class UnknownApiKey(StoreError):
    """The API key is not known or was revoked."""
