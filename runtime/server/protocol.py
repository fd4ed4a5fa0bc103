"""Request bodies of the OpenAI chat and text completions APIs (the subsets we serve) and the OpenAI error shape."""

import json
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from runtime.sampling import MAX_REPETITION_PENALTY, MIN_REPETITION_PENALTY, StructuredOutput

TOOL_CHOICE_MODES = ("none", "auto", "required")
MAX_CHOICES = 64  # choices of one request (for text completions: prompts x n)
# Stops and biases are applied in the engine's loop at every token of the request, which every other request waits
# on: a list of thousands (a body of a few MB) slowed each step by tenths of a second, a logit_bias over the whole
# vocabulary by a second. OpenAI takes 4 stop strings.
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
MAX_STOP_TOKEN_IDS = 256
MAX_LOGIT_BIASES = 1024


class ApiError(Exception):
    """An error answered with an OpenAI-style body: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None,
                 error_type: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.message, self.status, self.param, self.error_type, self.code = message, status, param, error_type, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}


class FunctionDef(BaseModel):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolDef(BaseModel):
    type: Literal["function"]
    function: FunctionDef


class StreamOptions(BaseModel):
    include_usage: bool = False


STRUCTURED_FIELDS = ("response_format", "guided_json", "guided_regex", "guided_choice", "guided_grammar")


def _response_format(response_format: dict[str, Any]) -> StructuredOutput:
    """OpenAI's `{"type": "json_object"}` (any JSON object) or `{"type": "json_schema", "json_schema": {"name",
    "schema", "strict"}}`."""
    kind = response_format.get("type")
    if kind == "json_object":
        return StructuredOutput("json", json.dumps({"type": "object"}))
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise ApiError("response_format.json_schema.schema must be a JSON schema object",
                           param="response_format")
        return StructuredOutput("json", json.dumps(schema))
    raise ApiError(f"response_format.type must be text, json_object or json_schema, got {kind!r}",
                   param="response_format")


def token_ids_in_vocabulary(ids: list[int], vocab_size: int, param: str) -> list[int]:
    """`ids`, or an ApiError naming `param` when one is outside the vocabulary (an id past it would fail inside the
    model, for every request of its batch)."""
    if bad := [i for i in ids if not 0 <= i < vocab_size]:
        raise ApiError(f"token ids outside the vocabulary (size {vocab_size}): {bad[:5]}", param=param)
    return list(ids)


def _positive(limit: int | None, param: str) -> int | None:
    if limit is not None and limit <= 0:
        raise ApiError(f"{param} must be > 0, got {limit}", param=param)
    return limit


class _SamplingRequest(BaseModel):
    """What chat and text completion requests share: the model asked for, sampling, limits, streaming."""

    model_config = ConfigDict(extra="ignore")  # user, metadata, ...: accepted and ignored

    model: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=-1)  # not OpenAI's, but vLLM and SGLang accept it (-1: no cut)
    ignore_eos: bool = False  # vLLM's and SGLang's too: benchmarks ask for a fixed number of tokens
    min_p: float | None = Field(default=None, ge=0, le=1)  # vLLM's and SGLang's
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    # vLLM's and SGLang's: over prompt and completion
    repetition_penalty: float | None = Field(default=None, ge=MIN_REPETITION_PENALTY, le=MAX_REPETITION_PENALTY)
    logit_bias: dict[str, float] | None = None  # token id (as a string, as OpenAI's API writes it) -> bias
    max_tokens: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None  # vLLM's and SGLang's: these end the completion too (not in its text)
    priority: int = 0  # vLLM's: lower is scheduled first (runtime/engine/scheduler.py)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # 64 bits, as OpenAI's and vLLM's
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None  # only with stream: true (vLLM refuses it otherwise)
    # structured output (runtime/structured.py): OpenAI's response_format, or one of vLLM's guided_* extras
    response_format: dict[str, Any] | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None

    @field_validator("n")
    @classmethod
    def _choices_in_range(cls, n: int) -> int:
        if not 1 <= n <= MAX_CHOICES:
            raise ValueError(f"n must be in [1, {MAX_CHOICES}], got {n}")
        return n

    @field_validator("logit_bias")
    @classmethod
    def _few_biases(cls, biases: dict[str, float] | None) -> dict[str, float] | None:
        if biases is not None and len(biases) > MAX_LOGIT_BIASES:
            raise ValueError(f"at most {MAX_LOGIT_BIASES} logit_bias entries, got {len(biases)}")
        return biases

    @field_validator("stop")
    @classmethod
    def _few_short_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOP_STRINGS or any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings of at most {MAX_STOP_CHARS} characters each")
        return stop

    @field_validator("stop_token_ids")
    @classmethod
    def _few_stop_ids(cls, ids: list[int] | None) -> list[int] | None:
        if ids is not None and len(ids) > MAX_STOP_TOKEN_IDS:
            raise ValueError(f"at most {MAX_STOP_TOKEN_IDS} stop token ids, got {len(ids)}")
        return ids

    @field_validator("stream_options")
    @classmethod
    def _options_of_a_stream(cls, options: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        if options is not None and not info.data.get("stream"):  # as vLLM: they would be ignored silently
            raise ValueError("stream_options can only be given with stream: true")
        return options

    @property
    def completion_limit(self) -> int | None:
        return _positive(self.max_tokens, "max_tokens")

    @property
    def limit_param(self) -> str:
        """The field `completion_limit` comes from."""
        return "max_tokens"

    sampling_fields: ClassVar[dict[str, str]] = {}  # a SamplingParams field -> this API's field, where they differ

    def param_of(self, sampling_field: str) -> str | None:
        """The request field a SamplingParams field comes from: the `param` of a 400 about it."""
        if sampling_field == "max_tokens":
            return self.limit_param
        if sampling_field == "structured":
            return self.structured_param
        return self.sampling_fields.get(sampling_field, sampling_field)

    def logit_biases(self, vocab_size: int) -> tuple[tuple[int, float], ...]:
        """`logit_bias` as (token id, bias) pairs; an ApiError for a key that is no token id of this vocabulary."""
        pairs = []
        for key, bias in (self.logit_bias or {}).items():
            # isdecimal, not isdigit: int() refuses digits such as "²" that isdigit takes (a 500)
            if not key.strip().isdecimal() or not 0 <= int(key) < vocab_size:
                raise ApiError(f"logit_bias keys are token ids below {vocab_size}, got {key!r}", param="logit_bias")
            pairs.append((int(key), bias))
        return tuple(pairs)

    @property
    def structured_fields(self) -> list[str]:
        """The structured-output fields the request sets."""
        return [name for name in STRUCTURED_FIELDS if getattr(self, name) is not None]

    @property
    def structured_param(self) -> str | None:
        return next(iter(self.structured_fields), None)

    def structured_output(self) -> StructuredOutput | None:
        """What the completion must follow, from whichever of the structured-output fields is set (at most one)."""
        given = self.structured_fields
        if given == ["response_format"] and self.response_format.get("type", "text") == "text":
            given = []
        if len(given) > 1:
            raise ApiError(f"give at most one of {', '.join(STRUCTURED_FIELDS)}; got {', '.join(given)}",
                           param=given[1])
        if not given:
            return None
        if given[0] == "response_format":
            return _response_format(self.response_format)
        if given[0] == "guided_json":
            schema = self.guided_json
            return StructuredOutput("json", schema if isinstance(schema, str) else json.dumps(schema))
        if given[0] == "guided_choice":
            if not self.guided_choice or not all(self.guided_choice):
                raise ApiError("guided_choice must be a list of non-empty strings", param="guided_choice")
            return StructuredOutput("choice", json.dumps(self.guided_choice))
        kind = "regex" if given[0] == "guided_regex" else "grammar"
        return StructuredOutput(kind, getattr(self, given[0]))

    def stop_ids(self, vocab_size: int) -> tuple[int, ...]:
        """`stop_token_ids`; an ApiError for an id outside this vocabulary."""
        return tuple(token_ids_in_vocabulary(self.stop_token_ids or [], vocab_size, "stop_token_ids"))

    @property
    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def top_logprob_count(self) -> int | None:
        """Alternatives to return per token (0: the chosen token's only); None: no log-probabilities."""
        return None

    @property
    def prompt_logprob_count(self) -> int | None:
        """The same for the prompt's tokens; None: none of them."""
        return None


class ChatCompletionRequest(_SamplingRequest):
    prompt_param: ClassVar[str] = "messages"  # the field an error about the prompt names
    sampling_fields: ClassVar[dict[str, str]] = {"logprobs": "top_logprobs"}
    messages: list[dict[str, Any]]
    tools: list[ToolDef] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None  # false: at most one call (the first); OpenAI's default is true
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    # vLLM's extension: each prompt token's log-probability and this many alternatives (the rendered messages scored)
    prompt_logprobs: int | None = Field(default=None, ge=0, le=20)
    best_of: int | None = None  # only n itself (see _best_of_is_n)

    @field_validator("best_of")
    @classmethod
    def _best_of_is_n(cls, best_of: int | None, info: ValidationInfo) -> int | None:
        """OpenAI's chat API has no best_of (the legacy completions API has: /v1/completions serves it). Refused
        rather than ignored, which would return n samples that are not the best of more."""
        n = info.data.get("n", 1)
        if best_of is not None and best_of != n:
            raise ValueError(f"best_of is served by /v1/completions only; here it can only be n ({n}), got {best_of}")
        return best_of

    @field_validator("top_logprobs")
    @classmethod
    def _alternatives_need_logprobs(cls, count: int | None, info: ValidationInfo) -> int | None:
        if count and not info.data.get("logprobs"):  # OpenAI and vLLM refuse it too: it would be ignored silently
            raise ValueError("top_logprobs needs logprobs: true")
        return count

    @field_validator("prompt_logprobs")
    @classmethod
    def _prompt_logprobs_not_streamed(cls, count: int | None, info: ValidationInfo) -> int | None:
        if count is not None and info.data.get("stream"):
            raise ValueError("prompt_logprobs are not available when stream is true")
        return count

    @field_validator("messages")
    @classmethod
    def _non_empty(cls, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not messages:
            raise ValueError("messages must contain at least one message")
        for i, message in enumerate(messages):
            if message.get("role") not in ("system", "developer", "user", "assistant", "tool"):
                raise ValueError(f"messages[{i}].role must be system, developer, user, assistant or tool")
        return messages

    @property
    def completion_limit(self) -> int | None:
        if self.max_completion_tokens is not None:  # the newer name wins, as OpenAI reads them
            return _positive(self.max_completion_tokens, "max_completion_tokens")
        return super().completion_limit

    @property
    def limit_param(self) -> str:
        return "max_tokens" if self.max_completion_tokens is None else "max_completion_tokens"

    @property
    def top_logprob_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def prompt_logprob_count(self) -> int | None:
        return self.prompt_logprobs


class CompletionRequest(_SamplingRequest):
    """The legacy text completions API (`/v1/completions`): a raw prompt, no chat template; what benchmark clients
    (vLLM's and SGLang's `bench serve`, lm-eval's generation tasks) send."""

    prompt_param: ClassVar[str] = "prompt"
    sampling_fields: ClassVar[dict[str, str]] = {"prompt_logprobs": "logprobs"}  # the prompt's, with echo
    # one prompt (text or token ids) or several; after validation always a list of prompts (see `prompts`)
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = 16  # OpenAI's default for this API
    logprobs: int | None = Field(default=None, ge=0, le=5)  # alternatives per token, as this API counts them
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None  # candidates sampled per prompt, of which the n likeliest come back (see candidates)

    @field_validator("prompt")
    @classmethod
    def _listed_prompts(cls, prompt: str | list) -> list[str | list[int]]:
        prompts = prompt if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else [prompt]
        if not prompts[0]:
            raise ValueError("the prompt is empty")
        if empty := [i for i, each in enumerate(prompts) if not each]:
            raise ValueError(f"prompts {empty[:5]} are empty")
        return prompts

    @field_validator("best_of")
    @classmethod
    def _best_of_at_least_n(cls, best_of: int | None, info: ValidationInfo) -> int | None:
        """As OpenAI's legacy API and vLLM V0 take it: fewer candidates than n cannot give n, and a stream would send
        candidates before it is known which are the best (OpenAI refuses best_of with stream)."""
        n = info.data.get("n", 1)
        if best_of is not None and not n <= best_of <= MAX_CHOICES:
            raise ValueError(f"best_of must be in [n, {MAX_CHOICES}], got best_of={best_of}, n={n}")
        if best_of is not None and best_of > n and info.data.get("stream"):
            raise ValueError("best_of cannot be streamed: which candidates are the best is known once all have ended")
        return best_of

    @property
    def candidates(self) -> int:
        """Completions sampled per prompt: `best_of`, of which the `n` with the highest cumulative log-probability
        of their generated tokens are returned (vLLM V0's ranking); else `n`. A scoring-only request generates
        nothing to rank: its candidates would all be the same scoring, so it runs `n`."""
        return self.n if self.scores_only else self.best_of or self.n

    @property
    def prompts(self) -> list[str | list[int]]:
        return self.prompt  # a list after validation

    @field_validator("suffix")
    @classmethod
    def _suffix_without_echo(cls, suffix: str | None, info: ValidationInfo) -> str | None:
        if suffix is not None and info.data.get("echo"):  # the prompt the model saw is not the text echo would show
            raise ValueError("echo and suffix cannot be used together")
        return suffix

    @property
    def top_logprob_count(self) -> int | None:
        return self.logprobs

    @property
    def prompt_logprob_count(self) -> int | None:
        return self.logprobs if self.echo else None

    @property
    def scores_only(self) -> bool:
        """`echo` with `max_tokens` 0: the prompt scored, nothing generated (as OpenAI's legacy API took it)."""
        return self.echo and self.max_tokens == 0

    @property
    def completion_limit(self) -> int | None:
        # the engine always samples the token after the prompt; a scoring request's is dropped from the reply
        return 1 if self.scores_only else super().completion_limit


class TokenizeRequest(BaseModel):
    """`POST /tokenize` (vLLM's): a raw prompt, or chat messages (and tools) as the chat route renders them."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    tools: list[ToolDef] | None = None

    @field_validator("messages")
    @classmethod
    def _non_empty(cls, messages: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if messages is not None and not messages:
            raise ValueError("messages must contain at least one message")
        return messages

    def chat(self) -> ChatCompletionRequest | None:
        """The messages as a chat request (None for a raw prompt); an ApiError unless exactly one of the two."""
        if (self.prompt is None) == (self.messages is None):
            raise ApiError("give either prompt or messages", param="prompt")
        if self.messages is None:
            return None
        return ChatCompletionRequest(messages=self.messages, tools=self.tools)


class DetokenizeRequest(BaseModel):
    """`POST /detokenize` (vLLM's): token ids back to text."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    tokens: list[int]
