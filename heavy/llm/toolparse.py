"""A tolerant reader of tool calls written as text, for replies whose structured `tool_calls` are empty.

Small models often write a call as a fenced ```json block, inside `<tool_call>` tags, or as a bare JSON object,
and put the arguments under `parameters` or as a JSON string. A call cut off by the step's token limit (a long
`sources` list after the answer) is closed at its last complete value rather than lost. This finds such objects;
deciding which tool was meant is the agent's job (`heavy.agent.repair`).
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from heavy.llm.types import ToolCall

_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_FENCED = re.compile(r"```(?:json|JSON|tool_call|python)?\s*\n?(.*?)```", re.DOTALL)
_ARGUMENT_KEYS = ("arguments", "parameters", "args", "input")
_MAX_CUTS = 32  # how many commas back a truncated object may be cut to
# a reply is closed at most this often as a cut-off call, each time at a "{" that starts a JSON object: each closing
# reads the rest of the reply up to _MAX_CUTS times, so one for every brace of a code-filled reply blocked the event
# loop for seconds
_MAX_CLOSINGS = 4
_JSON_OBJECT_START = re.compile(r'\{\s*"')


def own_call_id(name: str, index: int) -> str:
    """The id for the `index`-th call of a conversation when the harness makes the id: Kimi K2's own form, since its
    chat template shows the id to the model and a K2 server (vLLM's kimi_k2 parser) reads the tool's name back from
    the ids the model writes after it; other chat templates do not show ids."""
    return f"functions.{name}:{index}"


def parse_text_tool_calls(text: str) -> tuple[str, list[ToolCall]]:
    """Return (text without the calls, calls found in order). Text with no call comes back unchanged."""
    for pattern in (_TAGGED, _FENCED):
        calls, spans = [], []
        for match in pattern.finditer(text):
            call = _to_call(_load_object(match.group(1)), len(calls))
            if call is not None:
                calls.append(call)
                spans.append(match.span())
        if calls:
            return _cut(text, spans), calls
    return _bare_objects(text)


def _bare_objects(text: str) -> tuple[str, list[ToolCall]]:
    decoder = json.JSONDecoder()
    calls, spans, start, closings = [], [], text.find("{"), _MAX_CLOSINGS
    while start != -1:
        try:
            obj, length = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            if closings and _JSON_OBJECT_START.match(text, start):
                closings -= 1
                call = _to_call(close_truncated(text[start:]), len(calls))
                if call is not None:  # the reply was cut off inside this call: it runs to the end of the text
                    calls.append(call)
                    spans.append((start, len(text)))
                    break
            start = text.find("{", start + 1)
            continue
        call = _to_call(obj, len(calls))
        if call is not None:
            calls.append(call)
            spans.append((start, start + length))
        start = text.find("{", start + length)
    return (_cut(text, spans), calls) if calls else (text, [])


def close_truncated(fragment: str) -> Any:
    """The JSON value a fragment cut off mid-way would have been, up to its last complete member; None if none.

    Closes an open string and the open brackets; if that does not parse (a key without its value, half a number),
    cuts back to an earlier comma and tries again."""
    cuts = [len(fragment)] + [i for i in range(len(fragment) - 1, -1, -1) if fragment[i] == ","][:_MAX_CUTS]
    for cut in cuts:
        try:
            return json.loads(_closed(fragment[:cut]))
        except json.JSONDecodeError:
            continue
    return None


def _closed(piece: str) -> str:
    stack, in_string, escaped = [], False, False
    for ch in piece:
        if in_string:
            escaped, in_string = (False, True) if escaped else (ch == "\\", ch != '"')
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]" and stack:
            stack.pop()
    if in_string:
        piece += "\\" if escaped else ""
        piece += '"'
    return piece + "".join(reversed(stack))


def _cut(text: str, spans: list[tuple[int, int]]) -> str:
    kept, position = [], 0
    for begin, end in spans:
        kept.append(text[position:begin])
        position = end
    kept.append(text[position:])
    return "".join(kept).strip()


def _load_object(raw: str) -> Any:
    raw = raw.strip()
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        pass
    try:  # Python-literal dicts with single quotes are common too
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        pass
    return close_truncated(raw) if raw.startswith("{") else None


def _to_call(obj: Any, index: int) -> ToolCall | None:
    if isinstance(obj, list) and len(obj) == 1:
        obj = obj[0]
    if not isinstance(obj, dict):
        return None
    name = obj.get("name") or obj.get("tool") or obj.get("function")
    if isinstance(name, dict):  # {"function": {"name": ..., "arguments": ...}}
        obj, name = name, name.get("name")
    arguments: Any = next((obj[key] for key in _ARGUMENT_KEYS if key in obj), None)
    if isinstance(arguments, str):
        loaded = _load_object(arguments)
        arguments = loaded if isinstance(loaded, dict) else {"input": arguments}
    if arguments is None:
        arguments = {k: v for k, v in obj.items() if k not in ("name", "tool", "function")}
    if isinstance(arguments, dict) and ("properties" in arguments or arguments.get("type") == "object"):
        arguments = {}  # the tool's schema copied back: a call meant, its arguments missing (the executor says so)
    if not isinstance(arguments, dict) or not (isinstance(name, str) and name.strip() or arguments):
        return None
    return ToolCall(id=f"text_call_{index}", name=name.strip() if isinstance(name, str) else "", arguments=arguments)
