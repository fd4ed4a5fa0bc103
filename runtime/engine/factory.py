"""Build an engine from a model name or checkpoint folder: resolve (convert on first use), load, pick the tokenizer."""

from pathlib import Path

import torch

from runtime.dtypes import AUTO
from runtime.engine.config import EngineConfig
from runtime.engine.llm_engine import LLMEngine

KIMI_TOKENIZER_FILE = "tiktoken.model"


def load_tokenizer(folder: Path):
    """Kimi checkpoints ship a tiktoken vocabulary; Hugging Face style folders a tokenizer.json."""
    if (folder / KIMI_TOKENIZER_FILE).is_file():
        from runtime.tokenizers.kimi import KimiTokenizer

        return KimiTokenizer.from_pretrained(folder)
    from runtime.tokenizer import Tokenizer

    return Tokenizer.from_pretrained(folder)


def load_engine(
    name_or_path: str | Path, config: EngineConfig | None = None, dtype: str | torch.dtype = AUTO
) -> LLMEngine:
    """`dtype`: a torch dtype, "bfloat16", "float32", or "auto" (runtime/dtypes.py)."""
    from runtime.embedded import resolve_model
    from runtime.models.registry import load_model

    folder = resolve_model(name_or_path)
    return LLMEngine(load_model(folder, dtype), load_tokenizer(folder), config)
