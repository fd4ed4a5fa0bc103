"""Shared set-up of the EP, router and serving tests: replica specs and the single-process reference."""

from pathlib import Path

import torch

from runtime.engine.config import EngineConfig
from runtime.engine.factory import load_tokenizer
from runtime.engine.llm_engine import LLMEngine
from runtime.models.deepseek_v3 import DeepseekV3ForCausalLM
from runtime.replica.replica import ReplicaSpec

ENGINE = EngineConfig(block_size=4, num_blocks=96, max_num_seqs=8, max_num_batched_tokens=64, max_model_len=128)
PROMPTS = [[5, 17, 99, 3, 250, 41, 7], [900, 12, 12, 64, 8]]


def replica_spec(path: Path, ep: int, **overrides) -> ReplicaSpec:
    """fp32, so that EP changes nothing but the order in which the experts' outputs are added."""
    return ReplicaSpec(str(path), ep, dtype="float32", engine=ENGINE, **overrides)


def reference_model(path: Path) -> DeepseekV3ForCausalLM:
    model, _ = DeepseekV3ForCausalLM.from_pretrained(path, torch.float32)
    return model


def reference_engine(path: Path) -> LLMEngine:
    return LLMEngine(reference_model(path), load_tokenizer(path), ENGINE)


class Method:
    """What a Ray actor method looks like to its caller: `.remote(...)` gives something to await (for stand-in
    ranks, replicas and routers in tests without a Ray cluster)."""

    def __init__(self, run):
        self.run = run

    def remote(self, *args, **kwargs):
        return self.run(*args, **kwargs)
