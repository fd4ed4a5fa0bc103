"""The OpenAI chat-completions wire format, read: a whole `chat.completion`, a stream's chunks and their tool-call
fragments, usage and logprobs. Malformed input is an LLMError, never a KeyError deep in a trajectory."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from heavy.llm.think import split_reasoning
from heavy.llm.types import Completion, CompletionDelta, LLMError, Meter, ToolCall, Usage


def count_chunk(chunk: dict, meter: Meter) -> None:
    """A stream chunk's tokens into `meter`: its usage when it reports one, else one completion token when it carries
    generated text or a call's fragment (servers send one token a chunk)."""
    if chunk.get("usage"):
        meter.usage = parse_usage(chunk["usage"])
        return
    delta = ((chunk.get("choices") or [{}])[0] or {}).get("delta") or {}
    if delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning") or delta.get("tool_calls"):
        meter.usage = replace(meter.usage, completion_tokens=meter.usage.completion_tokens + 1)


def parse_usage(raw: dict | None) -> Usage:
    if not raw:
        return Usage()
    details = raw.get("prompt_tokens_details") or {}
    return Usage(
        prompt_tokens=int(raw.get("prompt_tokens") or 0),
        completion_tokens=int(raw.get("completion_tokens") or 0),
        cached_prompt_tokens=int(details.get("cached_tokens") or 0),
    )


def parse_arguments(raw: Any) -> dict:
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw or "{}")
    except json.JSONDecodeError:
        return {"input": raw}  # kept so the agent can tell the model what was wrong
    return value if isinstance(value, dict) else {"input": value}


def parse_completion(payload: dict) -> Completion:
    """An OpenAI chat.completion object → Completion (reasoning from `reasoning_content`, or from a leading
    `<think>` block of the content when the server sent none); LLMError when it is not one."""
    try:
        return _completion(payload)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise LLMError(f"malformed completion: {str(payload)[:300]}") from exc


def _completion(payload: dict) -> Completion:
    choice = payload["choices"][0]
    message = choice["message"]
    calls = tuple(
        ToolCall(
            id=call.get("id") or f"call_{i}",
            name=call["function"]["name"],
            arguments=parse_arguments(call["function"].get("arguments")),
        )
        for i, call in enumerate(message.get("tool_calls") or [])
    )
    content, reasoning = message.get("content") or "", message.get("reasoning_content") or message.get("reasoning")
    if not reasoning:
        content, reasoning = split_reasoning(content)
    return Completion(
        content=content,
        reasoning=reasoning or "",
        tool_calls=calls,
        finish_reason=choice.get("finish_reason") or "stop",
        usage=parse_usage(payload.get("usage")),
        top_logprobs=parse_logprobs(choice.get("logprobs")),
    )


def parse_logprobs(raw: dict | None) -> tuple[tuple[tuple[str, float], ...], ...]:
    """`choice.logprobs.content[*].top_logprobs` → per token, (token, logprob) best first; () when absent."""
    try:
        return tuple(tuple((alt["token"], float(alt["logprob"])) for alt in entry.get("top_logprobs") or ())
                     for entry in (raw or {}).get("content") or ())
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise LLMError(f"malformed logprobs: {str(raw)[:300]}") from exc


class ToolCallAssembler:
    """Collects the `delta.tool_calls` fragments of one streamed choice into whole calls.

    A fragment names its call by `index`; the first carries `id` and the start of `function.name`, later ones
    append to `function.arguments` (and, on some servers, to the name). Calls of different indices may interleave.
    """

    def __init__(self) -> None:
        self._parts: dict[int, dict[str, str]] = {}

    @property
    def pending(self) -> bool:
        return bool(self._parts)

    def add(self, fragments: list[dict]) -> None:
        for fragment in fragments:
            index = fragment.get("index", len(self._parts))
            part = self._parts.setdefault(index, {"id": "", "name": "", "arguments": ""})
            part["id"] = fragment.get("id") or part["id"]
            function = fragment.get("function") or {}
            part["name"] += function.get("name") or ""
            arguments = function.get("arguments") or ""
            part["arguments"] += arguments if isinstance(arguments, str) else json.dumps(arguments)

    def take(self) -> tuple[ToolCall, ...]:
        """The calls so far, in index order; the assembler is empty afterwards."""
        calls = tuple(
            ToolCall(id=part["id"] or f"call_{index}", name=part["name"],
                     arguments=parse_arguments(part["arguments"]))
            for index, part in sorted(self._parts.items())
        )
        self._parts.clear()
        return calls


def load_chunk(data: str) -> dict:
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError as exc:
        raise LLMError(f"malformed stream chunk: {data[:300]}") from exc
    if not isinstance(chunk, dict):
        raise LLMError(f"malformed stream chunk: {data[:300]}")
    return chunk


def parse_delta(chunk: dict, calls: ToolCallAssembler) -> CompletionDelta:
    if chunk.get("error"):  # servers report a failure after the stream started in-band
        error = chunk["error"]
        raise LLMError(f"stream error: {error.get('message', error) if isinstance(error, dict) else error}")
    choices = chunk.get("choices") or []
    delta = (choices[0].get("delta") or {}) if choices else {}
    finish_reason = choices[0].get("finish_reason") if choices else None
    calls.add(delta.get("tool_calls") or [])
    return CompletionDelta(
        content=delta.get("content") or "",
        reasoning=delta.get("reasoning_content") or delta.get("reasoning") or "",
        finish_reason=finish_reason,
        usage=parse_usage(chunk["usage"]) if chunk.get("usage") else None,
        tool_calls=calls.take() if finish_reason else (),
    )
