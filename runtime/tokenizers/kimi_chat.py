"""Kimi K2 Thinking's chat format, rendered as text and encoded with special ids exactly where it places them.

    [<|im_system|>tool_declare<|im_middle|>{tools as compact JSON}<|im_end|>]            if tools are given
    <|im_system|>system<|im_middle|>{system prompt (a default one if none)}<|im_end|>
    <|im_user|>user<|im_middle|>{content}<|im_end|>
    <|im_assistant|>assistant<|im_middle|><think>{reasoning}</think>{content}{tool-call section}<|im_end|>
    <|im_system|>tool<|im_middle|>## Return of {tool_call_id}\n{content}<|im_end|>
    <|im_assistant|>assistant<|im_middle|>                                                 the generation prompt

Reasoning is kept for the assistant messages after the last one that made no tool call (the turn in progress: an
agent's think → call → observe steps, including any user messages between them); that message and those before it
render an empty `<think></think>`, as Kimi K2 Thinking's own template does, so a thinking agent sees its earlier
reasoning between tool calls. Tool calls whose ids are not Kimi's `functions.NAME:IDX` get such ids (and the
tool results that answer them follow), because the model reads the name back from the id.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runtime.toolcalls import ToolCall
from runtime.toolcalls.kimi import KIMI_CALL_ID, kimi_call_id, section_pieces

if TYPE_CHECKING:  # kimi.py imports this module for its chat methods
    from runtime.tokenizers.kimi import KimiTokenizer

IM_SYSTEM, IM_USER, IM_ASSISTANT = "<|im_system|>", "<|im_user|>", "<|im_assistant|>"
IM_MIDDLE, IM_END = "<|im_middle|>", "<|im_end|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
DEFAULT_SYSTEM_PROMPT = "You are Kimi, an AI assistant created by Moonshot AI."
_ROLE_OPENERS = {"system": IM_SYSTEM, "user": IM_USER, "assistant": IM_ASSISTANT, "tool": IM_SYSTEM}

Message = Mapping[str, Any]


class ChatFormatError(ValueError):
    """A message the chat format cannot render (unknown role, tool result without its call id, …)."""


@dataclass(frozen=True)
class Special:
    """A special token placed by the template (never produced from message text)."""

    text: str


Part = str | Special


def render_parts(
    messages: Sequence[Message], tools: Sequence[Mapping[str, Any]] | None = None, *, add_generation_prompt: bool = True
) -> list[Part]:
    """The conversation as text and special-token parts."""
    parts: list[Part] = []
    if tools:
        parts += _block(IM_SYSTEM, "tool_declare", [json.dumps(list(tools), ensure_ascii=False, separators=(",", ":"))])
    if not messages or messages[0].get("role") != "system":
        parts += _block(IM_SYSTEM, "system", [DEFAULT_SYSTEM_PROMPT])
    last_reply = max((i for i, message in enumerate(messages)
                      if message.get("role") == "assistant" and not message.get("tool_calls")), default=-1)
    ids = _kimi_ids(messages)
    for index, message in enumerate(messages):
        role = message.get("role")
        if role not in _ROLE_OPENERS:
            raise ChatFormatError(f"message {index}: unknown role {role!r}")
        if role == "assistant":
            body = _assistant_body(message, ids, keep_reasoning=index > last_reply)
        elif role == "tool":
            if not message.get("tool_call_id"):
                raise ChatFormatError(f"message {index}: a tool message needs its tool_call_id")
            call_id = ids.get(message["tool_call_id"], message["tool_call_id"])
            body = [f"## Return of {call_id}\n{_text(message.get('content'))}"]
        else:
            body = [_text(message.get("content"))]
        parts += _block(_ROLE_OPENERS[role], role, body)
    if add_generation_prompt:
        parts += [Special(IM_ASSISTANT), "assistant", Special(IM_MIDDLE)]
    return parts


def render_chat(
    messages: Sequence[Message], tools: Sequence[Mapping[str, Any]] | None = None, *, add_generation_prompt: bool = True
) -> str:
    """The prompt as text (special tokens spelled out)."""
    parts = render_parts(messages, tools, add_generation_prompt=add_generation_prompt)
    return "".join(part.text if isinstance(part, Special) else part for part in parts)


def encode_chat(
    tokenizer: KimiTokenizer,
    messages: Sequence[Message],
    tools: Sequence[Mapping[str, Any]] | None = None,
    *,
    add_generation_prompt: bool = True,
) -> list[int]:
    """Token ids of the prompt: template markers as special ids, message text always as plain text."""
    ids: list[int] = []
    text_run: list[str] = []
    for part in render_parts(messages, tools, add_generation_prompt=add_generation_prompt):
        if isinstance(part, Special) and part.text in tokenizer.special_tokens:
            ids += tokenizer.encode("".join(text_run))
            text_run = []
            ids.append(tokenizer.special_id(part.text))
        else:  # a marker this vocabulary lacks (e.g. <think> in K2-Instruct) is ordinary text
            text_run.append(part.text if isinstance(part, Special) else part)
    return ids + tokenizer.encode("".join(text_run))


def message_tool_calls(message: Message) -> list[ToolCall]:
    """The tool calls of an assistant message, given as ToolCall values or OpenAI-style dicts."""
    calls = message.get("tool_calls") or []
    return [call if isinstance(call, ToolCall) else ToolCall.from_openai(call) for call in calls]


def _block(opener: str, role: str, body: list[Part]) -> list[Part]:
    return [Special(opener), role, Special(IM_MIDDLE), *body, Special(IM_END)]


def _assistant_body(message: Message, ids: dict[str, str], *, keep_reasoning: bool) -> list[Part]:
    reasoning = (message.get("reasoning_content") or message.get("reasoning") or "") if keep_reasoning else ""
    body: list[Part] = [Special(THINK_OPEN), reasoning, Special(THINK_CLOSE), _text(message.get("content"))]
    calls = [ToolCall(ids.get(c.id, c.id), c.name, c.arguments) for c in message_tool_calls(message)]
    if calls:
        body += [Special(text) if is_marker else text for text, is_marker in section_pieces(calls)]
    return body


def _kimi_ids(messages: Sequence[Message]) -> dict[str, str]:
    """Kimi-style ids for calls that lack them, numbered by position among all calls of the conversation."""
    renamed: dict[str, str] = {}
    index = 0
    for message in messages:
        if message.get("role") != "assistant":
            continue
        for call in message_tool_calls(message):
            if not KIMI_CALL_ID.match(call.id):
                renamed[call.id] = kimi_call_id(call.name, index)
            index += 1
    return renamed


def _text(content: Any) -> str:
    """Message content as text: a string, None, or OpenAI content parts of type text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")
