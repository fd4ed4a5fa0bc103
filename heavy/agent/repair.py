"""Turn what a weak model wrote into calls of tools that exist, or into a clear message saying why not.

Seen habits (models.md): the call's `name` is an entity instead of a tool; arguments wrapped or named loosely;
a lone `query` argument meaning search. Repair only ever maps to tools offered to this trajectory, so a page
that tells the model to call something else cannot widen the job's allow-list.
"""

from __future__ import annotations

import json
from dataclasses import replace

from heavy.agent.prompts import ANSWER_TOOL
from heavy.llm.types import ToolCall

UNREADABLE = "unreadable call"
_ANSWER_ALIASES = ("final_answer", "result", "text", "response", "output", "value", "input")


def _schema_properties(spec: dict) -> tuple[set[str], set[str]]:
    parameters = spec["function"]["parameters"]
    return set(parameters.get("properties", {})), set(parameters.get("required", []))


def _clean_name(name: str) -> str:
    name = name.strip().strip("`'\"").lower()
    for prefix in ("functions.", "function.", "tools.", "tool."):
        name = name.removeprefix(prefix)
    return name.replace("-", "_").replace(" ", "_")


def _unwrap(arguments: dict) -> dict:
    """{"query": {"value": "x"}} or {"query": {"description": .., "query": "x"}} → {"query": "x"}."""
    unwrapped = {}
    for key, value in arguments.items():
        if isinstance(value, dict):
            inner = value.get("value", value.get(key))
            if inner is not None:
                value = inner
        unwrapped[key] = value
    return unwrapped


def repair_call(call: ToolCall, specs: list[dict]) -> ToolCall | str:
    """A call of an offered tool with arguments it accepts, or the text to tell the model what went wrong."""
    offered = {spec["function"]["name"]: spec for spec in specs}
    arguments = _unwrap(call.arguments)
    written = call.name if isinstance(call.name, str) else json.dumps(call.name)  # an OpenAI server's null: "null"
    name = _clean_name(written)
    if name not in offered:
        name = _infer_tool(arguments, offered) or ""
    if not name:
        return UNREADABLE if not written.strip() else f"unknown tool {written!r}"
    properties, required = _schema_properties(offered[name])
    if name == ANSWER_TOOL and "answer" not in arguments:
        alias = next((k for k in _ANSWER_ALIASES if isinstance(arguments.get(k), str)), None)
        if alias is not None:
            arguments = {**arguments, "answer": arguments[alias]}
    # Extra keys (a stray "description") would fail validation although the call is clear: drop them.
    if properties and required <= arguments.keys():
        arguments = {k: v for k, v in arguments.items() if k in properties}
    return replace(call, name=name, arguments=arguments)


def _infer_tool(arguments: dict, offered: dict[str, dict]) -> str | None:
    if isinstance(arguments.get("answer"), str) and ANSWER_TOOL in offered:  # an answer, whatever else it holds
        return ANSWER_TOOL
    if "query" in arguments and "search" in offered:  # a lone query means search, whatever the name said
        return "search"
    candidates = []
    for name, spec in offered.items():
        properties, required = _schema_properties(spec)
        if required and required <= arguments.keys():
            candidates.append(name)
    return candidates[0] if len(candidates) == 1 else None
