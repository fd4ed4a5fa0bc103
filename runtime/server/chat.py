"""From a chat-completions request to prompt ids and sampling parameters, and from engine deltas to OpenAI deltas.

Tool calls and the `<think>` part are read from the text by the model's streaming parser (runtime.toolcalls).
"""

import asyncio
import dataclasses
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from runtime.engine.llm_engine import RequestOutput
from runtime.sampling import SamplingError, SamplingParams, TokenLogprobs
from runtime.server.protocol import TOOL_CHOICE_MODES, ApiError, ChatCompletionRequest, CompletionRequest
from runtime.toolcalls import KimiStreamParser, ParsedOutput, QwenStreamParser, ReasoningParser, ToolCallParseError

DEFAULT_TEMPERATURE = 1.0  # OpenAI's default


def _text_of(content: Any, index: int) -> str:
    """Message `index`'s content as text: a string, or a list of text parts joined. Any other part is a 400, as
    vLLM answers it for a text-only model (the models served here): dropped, an image's question was answered
    without it."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ApiError(f"messages[{index}].content must be a string or a list of content parts", param="messages")
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise ApiError(f"messages[{index}].content[{j}]: this model reads text parts only (type text, with a "
                           f"string text), got {kind!r}", param="messages")
    return "".join(part["text"] for part in content)


def template_messages(request: ChatCompletionRequest) -> list[dict[str, Any]]:
    """OpenAI messages in the form chat templates read (text content, tool-call arguments as objects)."""
    messages = []
    for index, message in enumerate(request.messages):
        role = "system" if message["role"] == "developer" else message["role"]
        out: dict[str, Any] = {"role": role, "content": _text_of(message.get("content"), index)}
        if message.get("tool_calls"):
            try:
                out["tool_calls"] = [
                    {**call, "function": {**call["function"], "arguments": _arguments(call["function"])}}
                    for call in message["tool_calls"]
                ]
            except (KeyError, TypeError, json.JSONDecodeError) as exc:
                raise ApiError(f"malformed assistant tool_calls: {exc}", param="messages") from exc
        for key in ("tool_call_id", "name"):
            if key in message:
                out[key] = message[key]
        messages.append(out)
    return messages


def _arguments(function: dict[str, Any]) -> dict[str, Any]:
    arguments = function.get("arguments") or {}
    return json.loads(arguments) if isinstance(arguments, str) else arguments


@dataclass(frozen=True)
class ToolPlan:
    tools: list[dict[str, Any]]  # rendered in the prompt
    parse_calls: bool  # tool calls are read out of the answer
    forced_name: str | None = None  # tool_choice named one function
    required: bool = False  # tool_choice "required"
    max_calls: int | None = None  # parallel_tool_calls false: 1 (the first call kept); None: any number


def tool_plan(request: ChatCompletionRequest) -> ToolPlan:
    tools = [t.model_dump(exclude_none=True) for t in request.tools or []]
    choice, max_calls = request.tool_choice, 1 if request.parallel_tool_calls is False else None
    if choice is None or choice == "auto":
        return ToolPlan(tools, bool(tools), max_calls=max_calls)
    if choice == "none":  # as vLLM: the model still sees the tools (the conversation may use them), but may not call
        return ToolPlan(tools, False)
    if choice == "required":
        if not tools:
            raise ApiError('tool_choice "required" needs at least one tool', param="tool_choice")
        return ToolPlan(tools, True, required=True, max_calls=max_calls)
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        chosen = [t for t in tools if t["function"]["name"] == name]
        if not chosen:
            raise ApiError(f"tool_choice names function {name!r}, which is not among the tools", param="tool_choice")
        return ToolPlan(chosen, True, forced_name=name)
    raise ApiError(f"unknown tool_choice {choice!r}: use one of {', '.join(TOOL_CHOICE_MODES)} or a function",
                   param="tool_choice")


async def chat_prompt_ids(request: ChatCompletionRequest, plan: ToolPlan, tokenizer) -> list[int]:
    """The prompt's token ids: the messages (and the plan's tools) through the model's chat template, off the event
    loop (rendering and tokenising a long prompt is real CPU work); a conversation the template rejects is a 400."""
    messages = template_messages(request)
    try:
        return await asyncio.to_thread(tokenizer.encode_chat, messages, plan.tools or None)
    except Exception as exc:  # e.g. roles out of order
        raise ApiError(f"the chat template cannot render these messages: {exc}", param="messages") from exc


def sampling_params(request: ChatCompletionRequest | CompletionRequest, prompt_len: int, max_model_len: int,
                    vocab_size: int, written: int = 0) -> SamplingParams:
    """The engine's sampling parameters; a 400 in OpenAI's and vLLM's words when the prompt, or the prompt and the
    asked-for completion, do not fit the context (not a completion cut short silently). No limit: the room left.
    `written`: completion tokens the server writes itself (a forced call's opening, which vLLM's grammar has the
    model write): they take completion room, so a client sizing max_tokens by /tokenize's count fits."""
    room, prompt = max_model_len - prompt_len, request.prompt_param
    context = f"This model's maximum context length is {max_model_len} tokens."
    if room <= 0:
        raise ApiError(f"{context} However, your {prompt} resulted in {prompt_len} tokens, leaving none for the "
                       f"completion. Please reduce the length of the {prompt}.", param=prompt)
    limit = request.completion_limit
    if limit is not None and limit > room:
        raise ApiError(f"{context} However, you requested {prompt_len + limit} tokens ({prompt_len} in the {prompt}, "
                       f"{limit} in the completion). Please reduce the length of the {prompt} or completion.",
                       param=request.limit_param)
    completion = room if limit is None else limit
    if completion <= written:
        raise ApiError(f"the forced tool call's opening takes {written} tokens, and the completion has room for "
                       f"{completion}: none is left to write the call",
                       param=prompt if limit is None else request.limit_param)
    try:
        return SamplingParams(
            temperature=DEFAULT_TEMPERATURE if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            top_k=request.top_k or 0,
            seed=request.seed,
            max_tokens=completion - written,
            stop=request.stop_strings,
            stop_token_ids=request.stop_ids(vocab_size),
            priority=request.priority,
            ignore_eos=request.ignore_eos,
            logprobs=request.top_logprob_count,
            prompt_logprobs=request.prompt_logprob_count,
            min_p=request.min_p or 0.0,
            presence_penalty=request.presence_penalty or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0,
            repetition_penalty=1.0 if request.repetition_penalty is None else request.repetition_penalty,
            logit_bias=request.logit_biases(vocab_size),
            structured=request.structured_output(),
        )
    except SamplingError as exc:
        raise ApiError(str(exc), param=request.param_of(exc.field)) from exc


def is_kimi(tokenizer) -> bool:
    return type(tokenizer).__name__ == "KimiTokenizer"


def make_parser(tokenizer, parse_calls: bool = True):
    """Kimi's tool-call section format for Kimi tokenizers, Qwen's forms otherwise; with no calls to parse (no tools,
    tool_choice "none"), only the reasoning is split off and a call the model writes anyway stays its raw text, as
    vLLM returns it."""
    if not parse_calls:
        return ReasoningParser()
    return KimiStreamParser() if is_kimi(tokenizer) else QwenStreamParser()


@dataclass
class ChoiceState:
    """Accumulates one choice over the deltas of its engine request."""

    index: int
    params: SamplingParams
    parser: Any  # its own: a parser keeps state between deltas
    max_calls: int | None = None  # parallel_tool_calls false: 1 (the answer ends with its first call); None: any
    calls_finish: str = "tool_calls"  # the finish reason of an answer with calls ("stop" for a named tool_choice)
    parsed: ParsedOutput = field(default_factory=ParsedOutput)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprobs | None] | None = None  # when asked: on the request's first output
    last: RequestOutput | None = None
    calls_sent: int = 0  # tool calls streamed so far (their indices go on)

    def prime(self, text: str) -> None:
        """Text the server wrote at the start of the answer (a forced call's opening): parsed, not generated."""
        self.parsed = self.parsed + self.parser.feed(text)

    def feed(self, out: RequestOutput, tokenizer) -> ParsedOutput:
        self.last = out
        if out.prompt_logprobs is not None:
            self.prompt_logprobs = out.prompt_logprobs
        delta = self.parser.feed(out.new_text)
        if out.finished:
            try:
                delta = delta + self.parser.finish()
            except ToolCallParseError as exc:  # a broken call stays visible as text rather than failing the request
                delta = delta + ParsedOutput(content=str(exc))
        if self.max_calls is not None and delta.tool_calls:
            kept = max(0, self.max_calls - len(self.parsed.tool_calls))
            delta = dataclasses.replace(delta, tool_calls=delta.tool_calls[:kept])
        self.logprobs.extend(
            _logprob_entry(t, lp, tokenizer) for t, lp in zip(out.new_token_ids, out.new_logprobs, strict=False)
        )
        self.parsed = self.parsed + delta
        return delta

    @property
    def done(self) -> bool:
        """The answer has all the calls it may have: its request is stopped rather than left to generate more."""
        return self.max_calls is not None and len(self.parsed.tool_calls) >= self.max_calls

    def stopped_as(self) -> str | None:
        """The finish reason the client is given when the server stops the request itself (`done`), else None."""
        return self.finish_reason if self.done else None

    def stream_entry(self, out: RequestOutput, tokenizer) -> dict[str, Any] | None:
        """Take one engine delta; the choice entry of a stream chunk that carries it (None: nothing to send yet)."""
        logprobs_before = len(self.logprobs)
        delta = self.feed(out, tokenizer)
        message = delta_message(delta, self.calls_sent)
        self.calls_sent += len(delta.tool_calls)
        ended = out.finished or self.done
        if not message and not ended and len(self.logprobs) == logprobs_before:
            return None  # (a token whose text is held back still sends its log-probability, as vLLM's stream does)
        entry = {"index": self.index, "delta": message, "finish_reason": self.finish_reason if ended else None}
        if self.params.logprobs is not None:
            entry["logprobs"] = {"content": self.logprobs[logprobs_before:]}
        return entry

    def final_choice(self) -> dict[str, Any]:
        choice = {"index": self.index, "message": final_message(self), "finish_reason": self.finish_reason}
        if self.params.logprobs is not None:
            choice["logprobs"] = {"content": self.logprobs}
        return choice

    @property
    def finish_reason(self) -> str:
        """"length" whenever the token limit ended the answer, calls parsed or not (as OpenAI, and as the runtime
        backend tells heavy: a trajectory reads a cut answer call's last sentence as unfinished). A named tool_choice's
        call ends with "stop", as OpenAI and vLLM say."""
        if self.last is not None and self.last.finish_reason == "length":
            return "length"
        return self.calls_finish if self.parsed.tool_calls else "stop"


def prompt_logprobs_body(prompt_ids: list[int], logprobs: list[TokenLogprobs | None],
                         tokenizer) -> list[dict[str, dict[str, Any]] | None]:
    """vLLM's `prompt_logprobs`: per prompt token (None for the first), its own and its alternatives'
    log-probabilities keyed by token id, each with its rank in the vocabulary (1: the likeliest)."""
    body = []
    for token_id, lp in zip(prompt_ids, logprobs, strict=True):
        if lp is None:
            body.append(None)
            continue
        entry = {str(i): {"logprob": v, "rank": rank, "decoded_token": tokenizer.decode([i])}
                 for rank, (i, v) in enumerate(lp.top, start=1)}
        entry[str(token_id)] = {"logprob": lp.logprob, "rank": lp.rank,
                                "decoded_token": tokenizer.decode([token_id])}
        body.append(entry)
    return body


def choices_usage(states: list[ChoiceState], written: int = 0) -> dict[str, Any]:
    """The prompt once, the completion tokens of every choice (each request's last output holds its totals).
    `written`: the tokens the server wrote at the start of each answer (in the engine's prompt), counted as
    completion, as the context check counts them."""
    first = states[0].last
    prompt = first.num_prompt_tokens - written
    return usage_body(prompt, sum(s.last.num_completion_tokens + written for s in states),
                      min(first.num_cached_tokens, prompt))


def usage_body(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def _logprob_entry(token_id: int, lp, tokenizer) -> dict[str, Any]:
    """OpenAI's entry: `bytes` let a client join a character split across tokens (each token's own text shows
    a replacement character for its part)."""
    def scored(token: int, logprob: float) -> dict[str, Any]:
        return {"token": tokenizer.decode([token]), "logprob": logprob, "bytes": list(tokenizer.token_bytes(token))}

    return {**scored(token_id, lp.logprob), "top_logprobs": [scored(i, v) for i, v in lp.top]}


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def delta_message(delta: ParsedOutput, first_call_index: int) -> dict[str, Any]:
    message: dict[str, Any] = {}
    if delta.reasoning:
        message["reasoning_content"] = delta.reasoning
    if delta.content:
        message["content"] = delta.content
    if delta.tool_calls:
        message["tool_calls"] = [
            {"index": first_call_index + i, **call.to_openai()} for i, call in enumerate(delta.tool_calls)
        ]
    return message


def final_message(state: ChoiceState) -> dict[str, Any]:
    parsed = state.parsed
    # as OpenAI's and vLLM's: null beside tool calls, else the text, "" too (a stop string in the first token)
    content = (parsed.content or None) if parsed.tool_calls else parsed.content
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if parsed.reasoning:
        message["reasoning_content"] = parsed.reasoning
    if parsed.tool_calls:
        message["tool_calls"] = [call.to_openai() for call in parsed.tool_calls]
    return message
