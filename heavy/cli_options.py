"""Choices the `heavy` commands share (`heavy ask` runs a job here, `heavy jobs submit` on a service)."""

from __future__ import annotations

from enum import StrEnum

PORTS = {"min": 0, "max": 65535}  # typer.Option(**PORTS): a bad port is refused before anything starts (0: any free)


class ModeOption(StrEnum):
    report = "report"
    answer = "answer"


class BackendOption(StrEnum):
    runtime = "runtime"
    openai = "openai"


class SearchOption(StrEnum):
    local = "local"
    web = "web"


class ToolOption(StrEnum):
    search = "search"
    open_page = "open_page"
    python = "python"
