"""The inference engine: paged KV cache, prefix cache, continuous batching, sampling (docs/runtime.md)."""

from runtime.engine.config import EngineConfig, EngineConfigError
from runtime.engine.llm_engine import Completion, LLMEngine, PromptTooLong, RequestError, RequestOutput
from runtime.engine.sequence import FinishReason

__all__ = [
    "Completion", "EngineConfig", "EngineConfigError", "FinishReason", "LLMEngine", "PromptTooLong", "RequestError",
    "RequestOutput",
]
