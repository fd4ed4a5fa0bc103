"""Reading a server's Retry-After header, for heavy's HTTP clients that retry (the LLM backend, callbacks, `heavy
jobs`)."""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime


def retry_after_seconds(header: str | None) -> float | None:
    """A Retry-After header's wait in seconds, in either form HTTP allows (seconds, or an HTTP date; RFC 9110
    10.2.3); None when absent or unreadable. Each client caps it."""
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(header).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
