"""The context heavy fits its prompts to: `HEAVY_CONTEXT_TOKENS`, or the server's own when it reports a smaller one
(a `runtime serve` or vLLM started with a smaller `--max-model-len`, or one whose KV cache or model holds less).
Sized to the larger, every long prompt would be a 400 that the openai backend asks again with less room
(openai_backend.py)."""

from __future__ import annotations

import logging

from heavy.llm.types import LLMBackend

log = logging.getLogger(__name__)


async def usable_context(backend: LLMBackend, configured: int) -> int:
    """`configured`, clamped to the context the backend's server reports (a warning when it does); a backend that
    reports none (the runtime backend sizes its engine to `configured`; servers without `max_model_len`) keeps it."""
    read = getattr(backend, "served_context", None)
    served = await read() if read is not None else None
    if served is None or served >= configured:
        return configured
    log.warning("the server's context is %d tokens, HEAVY_CONTEXT_TOKENS %d: prompts are fitted to %d", served,
                configured, served)
    return served
