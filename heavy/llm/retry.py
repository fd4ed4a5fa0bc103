"""Retries with exponential backoff and jitter for retriable LLM failures (429, 5xx, connection errors)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from heavy.llm.types import LLMError, RetriableLLMError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 4
    backoff_s: float = 0.5
    backoff_max_s: float = 20.0
    # a server that answered before and now does not (a restart: its retries spent in seconds) is tried again, every
    # backoff_max_s, until this long after its outage began (ServerSeen); one that never answered, or that answers
    # with an error of its own (a 500, a 429), fails after max_retries
    outage_s: float = 0.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.backoff_s <= 0 or self.backoff_max_s < self.backoff_s:
            raise ValueError("need 0 < backoff_s <= backoff_max_s")
        if self.outage_s < 0:
            raise ValueError(f"outage_s must be >= 0, got {self.outage_s}")

    def delay(self, attempt: int, retry_after_s: float | None) -> float:
        """Seconds to wait before retry number `attempt` (0-based); a server's Retry-After wins when larger."""
        exponential = min(self.backoff_max_s, self.backoff_s * 2 ** min(attempt, 32))  # a float's range
        jittered = exponential * random.uniform(0.5, 1.0)  # spread the 8 trajectories' retries apart
        return max(jittered, min(retry_after_s or 0.0, self.backoff_max_s))


class ServerSeen:
    """What one backend has seen of its server, shared by all its requests: whether it ever answered, and since when
    it has left requests unanswered. One outage is one bound: the sequential calls of an aggregation each waited the
    whole `outage_s` when it was counted per request, so a report came several outages after the job's deadline."""

    def __init__(self) -> None:
        self._ever_answered = False
        self._unanswered_since: float | None = None  # the first failure since the last answer

    def answered(self) -> None:
        self._ever_answered, self._unanswered_since = True, None

    def outage_s(self) -> float:
        """Seconds since the server stopped answering, counted from now if it just did; infinite if it never
        answered (not a restart: a wrong URL or port)."""
        if not self._ever_answered:
            return float("inf")
        if self._unanswered_since is None:
            self._unanswered_since = time.monotonic()
        return time.monotonic() - self._unanswered_since


async def with_retries(call: Callable[[], Awaitable[T]], policy: RetryPolicy, *, what: str,
                       server: ServerSeen | None = None) -> T:
    """Run `call`, retrying RetriableLLMError up to `policy.max_retries` times, or, while a `server` that answered
    before leaves it unanswered, until `policy.outage_s` into that outage if that is longer. Cancellation is never
    retried."""
    failed_at = None
    for attempt in itertools.count():
        try:
            return await call()
        except RetriableLLMError as exc:
            failed_at = failed_at or time.monotonic()
            waited = time.monotonic() - failed_at
            restarting = server is not None and exc.no_server and server.outage_s() < policy.outage_s
            if attempt >= policy.max_retries and not restarting:
                raise LLMError(f"{what}: giving up after {attempt + 1} attempts in {waited:.0f} s: {exc}") from exc
            delay = policy.delay(attempt, exc.retry_after_s)
            log.warning("%s: %s; retry %d in %.2fs", what, exc, attempt + 1, delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")
