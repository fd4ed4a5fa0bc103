"""The services' log lines: one JSON object a line (`heavy serve`, `heavy worker`), for a log pipeline to parse."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from contextvars import ContextVar

# the job (and tenant) the code logging now works for: set in its task, seen by the tasks and threads it starts
_ABOUT: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("heavy_log_about", default=())


def log_about(job_id: str | None = None, tenant: str | None = None) -> None:
    """Tag the records this task logs from now on (and the tasks it starts) with `job_id` and `tenant`, so that a
    log pipeline finds a job's or a tenant's lines by field, whichever module wrote them."""
    _ABOUT.set(_with(job_id, tenant))


@contextlib.contextmanager
def logging_about(job_id: str | None = None, tenant: str | None = None) -> Iterator[None]:
    """`log_about` for the block only: for a task that logs about one job, then another (the lease renewer)."""
    token = _ABOUT.set(_with(job_id, tenant))
    try:
        yield
    finally:
        _ABOUT.reset(token)


def _with(job_id: str | None, tenant: str | None) -> tuple[tuple[str, str], ...]:
    about = {**dict(_ABOUT.get()), **({"job_id": job_id} if job_id else {}), **({"tenant": tenant} if tenant else {})}
    return tuple(about.items())


class JsonLines(logging.Formatter):
    """ts, level, logger, job_id and tenant where one applies (`log_about`), a record's `json_fields` (`extra=`:
    the runtime's count of a Ray line repeated across workers), msg, and a traceback as `exc`, JSON-encoded: a message
    carries text from fetched pages, model servers and tenants' callback URLs, whose quote or newline must not end
    the record or forge one of its own."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": self.formatTime(record), "level": record.levelname, "logger": record.name, **dict(_ABOUT.get()),
                 **getattr(record, "json_fields", {}), "msg": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry)  # ASCII: no C1 control nor U+2028 reaches whoever reads the log on a terminal


def log_json_lines(level: int = logging.INFO) -> None:
    """Every record at `level` and above as a JSON line on stderr (uvicorn's too, when it is run with no log config of
    its own)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines())
    logging.basicConfig(level=level, handlers=[handler])
    # httpx logs each request's full URL at INFO: a tenant's callback URL, whose path or query may hold its
    # receiver's token, and a line per model request and fetched page
    logging.getLogger("httpx").setLevel(max(level, logging.WARNING))
