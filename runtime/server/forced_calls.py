"""A required or named `tool_choice`: the server writes the start of the call into the answer and holds the rest to
the tools' schemas with a grammar (runtime/structured.py), as vLLM does, so the answer is a call that parses and fits.

Qwen's form, after the forced `<tool_call>\n{"name": "`: one of the tools' names, `", "arguments": `, that tool's
parameters as JSON, `}\n</tool_call>`. Kimi K2's, after `<|tool_calls_section_begin|><|tool_call_begin|>functions.`:
a name, `:IDX<|tool_call_argument_begin|>`, the JSON, `<|tool_call_end|><|tool_calls_section_end|>`; its markers
are special tokens, which this grammar alone may write (and the JSON may not contain). A named function is written
into the prefix too. After the call only EOS may follow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from runtime.sampling import StructuredOutput
from runtime.server.chat import ToolPlan, is_kimi
from runtime.structured import MAX_WHITESPACE
from runtime.toolcalls.kimi import ARGUMENT_BEGIN, CALL_BEGIN, CALL_END, SECTION_BEGIN, SECTION_END, SECTION_MARKERS


@dataclass(frozen=True)
class ForcedCall:
    prefix: str  # written for the model at the start of its answer: parsed, not generated
    prefix_ids: list[int]
    grammar: StructuredOutput  # what may follow the prefix


def forced_call(plan: ToolPlan, tokenizer, calls_before: int) -> ForcedCall | None:
    """The forced call's prefix and grammar, or None when the tool choice forces nothing. `calls_before`: tool calls
    earlier in the conversation (Kimi numbers its call ids across it)."""
    if not (plan.required or plan.forced_name):
        return None
    kimi = is_kimi(tokenizer)
    if kimi:
        opening, after_name, end = SECTION_BEGIN + CALL_BEGIN + "functions.", f":{calls_before}{ARGUMENT_BEGIN}", (
            CALL_END + SECTION_END)
    else:
        opening, after_name, end = '<tool_call>\n{"name": "', '", "arguments": ', "}\n</tool_call>"
    excluded = list(SECTION_MARKERS) if kimi else []

    def arguments(tool: dict[str, Any]) -> list[dict[str, Any]]:
        schema = tool["function"].get("parameters") or {"type": "object"}
        return [{"type": "json_schema", "json_schema": schema, "max_whitespace_cnt": MAX_WHITESPACE,
                 "excludes": excluded}, {"type": "const_string", "value": end}]

    def name(tool: dict[str, Any]) -> str:
        written = tool["function"]["name"]
        return written if kimi else json.dumps(written)[1:-1]

    if plan.forced_name:
        prefix = opening + name(plan.tools[0]) + after_name
        grammar = {"type": "sequence", "elements": arguments(plan.tools[0])}
    else:
        prefix = opening
        grammar = {"type": "or", "elements": [
            {"type": "sequence", "elements": [{"type": "const_string", "value": name(tool) + after_name},
                                              *arguments(tool)]}
            for tool in plan.tools]}
    spec = json.dumps({"type": "structural_tag", "format": grammar})
    prefix_ids = tokenizer.encode(prefix, allow_special=True) if kimi else tokenizer.encode(prefix)  # markers: 1 id
    return ForcedCall(prefix, prefix_ids,
                      StructuredOutput("structural_tag", spec, specials=SECTION_MARKERS if kimi else ()))


def calls_before(messages: list[dict[str, Any]]) -> int:
    return sum(len(message.get("tool_calls") or []) for message in messages)
