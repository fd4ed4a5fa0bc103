"""LLM backends behind one protocol; `make_backend` picks one by name (heavy imports from runtime happen only in
this package, and lazily, so the API process starts without torch)."""

from __future__ import annotations

from heavy.config import Settings
from heavy.llm.openai_backend import OpenAIBackend
from heavy.llm.ratelimit import RateLimiter
from heavy.llm.retry import RetryPolicy
from heavy.llm.types import (
    Completion,
    CompletionDelta,
    LLMBackend,
    LLMError,
    Message,
    RetriableLLMError,
    Sampling,
    ToolCall,
    Usage,
)

BACKENDS = ("runtime", "openai")


class UnknownBackend(LLMError):
    """The backend name is not one of BACKENDS."""


# the runtime router's settings heavy passes on (RouterConfig's fields; each HEAVY_RUNTIME_<FIELD>)
ROUTER_FIELDS = ("health_interval_s", "health_timeout_s", "unanswered_rounds", "stall_after_s", "max_prefix_keys")


def make_backend(settings: Settings, name: str | None = None) -> LLMBackend:
    """The backend `name` (default: settings.backend) configured from settings; one per worker process, so its
    rate limiter is shared by every trajectory the worker runs."""
    name = name or settings.backend
    limiter = RateLimiter(settings.llm_requests_per_s, settings.llm_max_concurrency)
    retry = RetryPolicy(settings.llm_max_retries, settings.llm_backoff_s, settings.llm_backoff_max_s,
                        outage_s=settings.llm_outage_s)
    if name == "openai":
        return OpenAIBackend(settings.openai_base_url, settings.model, api_key=settings.openai_api_key,
                             timeout_s=settings.openai_timeout_s, retry=retry, limiter=limiter)
    if name == "runtime":
        from heavy.llm.runtime_backend import RuntimeBackend  # torch (and Ray, for replicas) is imported only here

        return RuntimeBackend.load(settings.model, context_tokens=settings.context_tokens, limiter=limiter,
                                   retry=retry, replicas=settings.runtime_replicas or 0, ep=settings.runtime_ep,
                                   prefix_cache=settings.runtime_prefix_cache,
                                   batch_invariant=settings.runtime_batch_invariant, dtype=settings.runtime_dtype,
                                   speculative_tokens=settings.runtime_speculative_tokens,
                                   router={field: value for field in ROUTER_FIELDS
                                           if (value := getattr(settings, f"runtime_{field}")) is not None})
    raise UnknownBackend(f"unknown LLM backend {name!r}; choose one of {', '.join(BACKENDS)}")


__all__ = [
    "BACKENDS", "Completion", "CompletionDelta", "LLMBackend", "LLMError", "Message", "OpenAIBackend", "RateLimiter",
    "RetriableLLMError", "RetryPolicy", "Sampling", "ToolCall", "UnknownBackend", "Usage", "make_backend",
]
