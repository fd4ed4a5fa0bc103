"""The services' log lines: one JSON object a line (`heavy serve`, `heavy worker`), for a log pipeline to parse."""

from __future__ import annotations

import json
import logging


class JsonLines(logging.Formatter):
    """ts, level, logger, msg, and a traceback as `exc`, JSON-encoded: a message carries text from fetched pages, model
    servers and tenants' callback URLs, whose quote or newline must not end the record or forge one of its own."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": self.formatTime(record), "level": record.levelname, "logger": record.name,
                 "msg": record.getMessage()}
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
