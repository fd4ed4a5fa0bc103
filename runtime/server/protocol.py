"""Request bodies of the OpenAI chat-completions API (the subset we serve) and the OpenAI error shape."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

TOOL_CHOICE_MODES = ("none", "auto", "required")


class ApiError(Exception):
    """An error answered with an OpenAI-style body: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None,
                 error_type: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.status, self.param, self.error_type = message, status, param, error_type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": None}}


class FunctionDef(BaseModel):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolDef(BaseModel):
    type: Literal["function"]
    function: FunctionDef


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # penalties, user, metadata, ...: accepted and ignored

    model: str | None = None
    messages: list[dict[str, Any]]
    tools: list[ToolDef] | None = None
    tool_choice: str | dict[str, Any] | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)  # not OpenAI's, but vLLM and SGLang accept it
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: dict[str, Any] | None = None

    @field_validator("messages")
    @classmethod
    def _non_empty(cls, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not messages:
            raise ValueError("messages must contain at least one message")
        for i, message in enumerate(messages):
            if message.get("role") not in ("system", "developer", "user", "assistant", "tool"):
                raise ValueError(f"messages[{i}].role must be system, developer, user, assistant or tool")
        return messages

    @field_validator("response_format")
    @classmethod
    def _plain_text(cls, response_format: dict[str, Any] | None) -> dict[str, Any] | None:
        # no constrained decoding here: a client asking for JSON must hear so, not get free text it will fail to parse
        kind = (response_format or {}).get("type", "text")
        if kind != "text":
            raise ValueError(f"only type 'text' is supported (no constrained decoding), got {kind!r}")
        return response_format

    @field_validator("n")
    @classmethod
    def _single_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported")
        return n

    @property
    def completion_limit(self) -> int | None:
        limit = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        if limit is not None and limit <= 0:
            raise ApiError(f"max_tokens must be > 0, got {limit}", param="max_tokens")
        return limit

    @property
    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
