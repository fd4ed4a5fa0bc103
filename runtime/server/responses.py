"""The response bodies /openapi.json documents beside the completions themselves: OpenAI's error shape (ApiError's
body) and the health checks'."""

from typing import Any, Literal

from pydantic import BaseModel, Field


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """ApiError's body, as /openapi.json documents it."""

    error: ErrorInfo


# What /openapi.json tells a client beside a route's 200. A refused request, an invalid one included, is a 400 or 404
# with the OpenAI error body (FastAPI's own 422 is never sent); "default" names that body for a failure (500).
REFUSALS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "an invalid request: `param` names the field"},
    404: {"model": ErrorResponse, "description": "a model this server does not serve"},
    "default": {"model": ErrorResponse,
                "description": "a failure of the server (500), or every structured-output compile thread busy (503)"},
}


class ServerStatus(BaseModel):
    """/health's and /ready's body."""

    status: Literal["ok", "unavailable"]
    reason: str | None = Field(None, description="why it is unavailable")
