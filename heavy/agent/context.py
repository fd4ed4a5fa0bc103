"""Keep a trajectory's prompt inside the context window: drop the oldest tool outputs first, then the reasoning
behind older steps (a thinking model's, kept for it between tool calls), then whole older steps.

Tokens are estimated from characters (conservatively, 3 characters a token) so this needs no tokenizer;
the system prompt, the question and the latest tool output are always kept. The same estimate stands in for the
usage a server did not report.
"""

from __future__ import annotations

from dataclasses import replace
from itertools import accumulate

from heavy.llm.types import Completion, ContextLengthError, Message, Meter, Usage

CHARS_PER_TOKEN = 3
MESSAGE_OVERHEAD_TOKENS = 8  # role markers and separators of a chat template
DROPPED = "[older tool output removed to fit the context]"
REASONING_DROPPED = "[reasoning removed to fit the context]"
CUT = "\n[cut to fit the context]"


def estimate_tokens(messages: list[Message], tools: list[dict] | None = None) -> int:
    return _tokens(sum(map(_chars, messages)) + _tools_chars(tools), len(messages))


def _chars(message: Message) -> int:
    return (len(str(message.get("content") or "")) + len(str(message.get("tool_calls") or ""))
            + len(message.get("reasoning_content") or ""))


def _tools_chars(tools: list[dict] | None) -> int:
    return len(str(tools)) if tools else 0


def _tokens(chars: int, messages: int) -> int:
    return chars // CHARS_PER_TOKEN + MESSAGE_OVERHEAD_TOKENS * messages


def with_usage(completion: Completion, prompt: list[Message], tools: list[dict] | None) -> Completion:
    """The completion, with usage estimated from the prompt and the reply when its server reported none (some
    OpenAI-compatible servers omit it): budgets are counted in these tokens, and zeros would never spend them."""
    if completion.usage.total_tokens:
        return completion
    reply = [{"content": completion.content, "reasoning_content": completion.reasoning,
              "tool_calls": [c.arguments for c in completion.tool_calls]}]
    return replace(completion, usage=Usage(prompt_tokens=estimate_tokens(prompt, tools),
                                           completion_tokens=estimate_tokens(reply)))


def earlier_attempts(meter: Meter, prompt: list[Message], tools: list[dict] | None) -> Usage:
    """What a retried request's failed attempts spent, charged whatever the last one does: what its backend counted
    of them (a replica lost mid-reply), and for each its server worked on and never answered (a reply that timed out)
    the prompt by the estimate, as for an aborted request."""
    return meter.earlier + Usage(prompt_tokens=meter.unanswered * estimate_tokens(prompt, tools))


def aborted_usage(meter: Meter, prompt: list[Message], tools: list[dict] | None) -> Usage:
    """What a request aborted in flight spent, as its backend's `meter` counted it: nothing if it was never sent;
    else its prompt (by the estimate when the backend could not count it: a non-streamed OpenAI request) and the
    completion tokens counted so far; its earlier attempts' either way."""
    earlier = earlier_attempts(meter, prompt, tools)
    if not meter.sent:
        return earlier
    if meter.usage.prompt_tokens:
        return earlier + meter.usage
    return earlier + replace(meter.usage, prompt_tokens=estimate_tokens(prompt, tools))


def failed_usage(meter: Meter, error: Exception, prompt: list[Message], tools: list[dict] | None) -> Usage:
    """What a request that failed spent: what its backend's `meter` counted before the failure (a runtime reply whose
    tool call would not parse, an engine lost mid-reply after the retries), never an estimate (a server that never
    answered may have done nothing); nothing for a prompt refused as too long, which no server computed. Its earlier
    attempts' either way."""
    earlier = earlier_attempts(meter, prompt, tools)
    return earlier if isinstance(error, ContextLengthError) else earlier + meter.usage


def with_earlier_attempts(completion: Completion, meter: Meter, prompt: list[Message],
                          tools: list[dict] | None) -> Completion:
    """The completion with its request's failed attempts in its usage (a retried request): the job is charged all."""
    earlier = earlier_attempts(meter, prompt, tools)
    return replace(completion, usage=completion.usage + earlier) if earlier.total_tokens else completion


def fit_context(messages: list[Message], tools: list[dict] | None, max_prompt_tokens: int) -> list[Message]:
    """A copy of `messages` whose estimate fits `max_prompt_tokens`; history itself is not changed. What goes, in
    order: the older tool outputs, the reasoning behind older steps, whole older steps (a long run's calls alone
    outgrow the window), then the tail of the newest output. The messages before the first step (the system prompt
    and the question) always stay; if they alone do not fit, the prompt goes over and the backend refuses it."""
    fitted = [dict(m) for m in messages]
    # the estimate is kept as messages change, not counted again over the whole prompt for each one a long run
    # drops (hundreds of steps: O(steps²) a request)
    sizes = [_chars(m) for m in fitted]
    chars = sum(sizes) + _tools_chars(tools)

    def fits() -> bool:
        return _tokens(chars, len(fitted)) <= max_prompt_tokens

    def changed(i: int) -> None:
        nonlocal chars
        chars += _chars(fitted[i]) - sizes[i]
        sizes[i] = _chars(fitted[i])

    tool_turns = [i for i, m in enumerate(fitted) if m["role"] == "tool"]
    for i in tool_turns[:-1]:
        if fits():
            return fitted
        fitted[i]["content"] = DROPPED
        changed(i)
    reasoned = [i for i, m in enumerate(fitted) if m.get("reasoning_content")]
    for i in reasoned[:-1]:
        if fits():
            return fitted
        if fitted[i].get("tool_calls"):  # Moonshot refuses a call turn without its reasoning (400)
            fitted[i]["reasoning_content"] = REASONING_DROPPED
        else:
            del fitted[i]["reasoning_content"]
        changed(i)
    steps = [i for i, m in enumerate(fitted) if m["role"] == "assistant"]  # a step: its call, then its results
    whole, whole_chars = fitted, chars
    before = list(accumulate(sizes, initial=0))  # before[i]: the characters of the messages before i
    for start in steps[1:]:
        if fits():
            return fitted
        fitted = whole[:steps[0]] + whole[start:]
        chars = whole_chars - (before[start] - before[steps[0]])
    excess = _tokens(chars, len(fitted)) - max_prompt_tokens
    newest = next((m for m in reversed(fitted) if m["role"] == "tool"), None)
    if excess > 0 and newest is not None:  # even the newest output is too long: keep its head
        keep = max(0, len(newest["content"]) - excess * CHARS_PER_TOKEN - len(CUT))
        newest["content"] = newest["content"][:keep] + CUT
    return fitted


def without_unrun_calls(messages: list[Message]) -> list[Message]:
    """The conversation without the last turn's calls that have no result (the deadline stopped the step inside its
    tools): OpenAI-compatible servers refuse a call left without one (400)."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None or not messages[last].get("tool_calls"):
        return messages
    answered = {m.get("tool_call_id") for m in messages[last + 1:] if m["role"] == "tool"}
    run = [c for c in messages[last]["tool_calls"] if c["id"] in answered]
    if len(run) == len(messages[last]["tool_calls"]):
        return messages
    turn = {key: value for key, value in messages[last].items() if key != "tool_calls"}
    return messages[:last] + [{**turn, "tool_calls": run} if run else turn] + messages[last + 1:]
