"""`runtime serve`'s log lines: one JSON object a line on stderr (uvicorn's access lines and Python's warnings too),
for a log pipeline to parse. Its own, not heavy's: the runtime never imports heavy."""

from __future__ import annotations

import json
import logging


class JsonLines(logging.Formatter):
    """ts, level, logger, a record's `json_fields` (`extra=`: a count Ray gave a repeated line), msg, and a
    traceback as `exc`, JSON-encoded: a message may quote a request's path or a model's text, whose quote or newline
    must not end the record or forge one of its own."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": self.formatTime(record), "level": record.levelname, "logger": record.name,
                 **getattr(record, "json_fields", {}), "msg": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry)  # ASCII: no C1 control nor U+2028 reaches whoever reads the log on a terminal


def log_json_lines(level: int = logging.INFO) -> None:
    """Every record at `level` and above as a JSON line on stderr; uvicorn's too when it is run with
    `log_config=None`, and Python's warnings (a library's deprecation notice would be a plain line)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines())
    logging.basicConfig(level=level, handlers=[handler])
    logging.captureWarnings(True)
