"""Session fixtures for the real embedded model (Qwen2.5-Coder-0.5B-Instruct), shared by runtime tests.

The first use in a fresh HEAVY_HOME joins, verifies and converts the GGUF (about a minute); later sessions only
load the converted folder.
"""

from pathlib import Path

import pytest
import torch

from runtime.embedded import DEFAULT_MODEL, resolve_model
from runtime.models.registry import load_model
from runtime.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """The converted folder of the default embedded model (config.json, model.safetensors, tokenizer files)."""
    return resolve_model(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def embedded_tokenizer(embedded_model_dir) -> Tokenizer:
    return Tokenizer.from_pretrained(embedded_model_dir)


@pytest.fixture(scope="session")
def embedded_model_bf16(embedded_model_dir) -> torch.nn.Module:
    """Our Qwen2 with the real weights in BF16, loaded once per session."""
    return load_model(embedded_model_dir, torch.bfloat16)


@pytest.fixture(scope="session")
def embedded_model_fp32(embedded_model_dir) -> torch.nn.Module:
    """Our Qwen2 with the real weights in FP32, loaded once per session."""
    return load_model(embedded_model_dir, torch.float32)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray instance for the session's `ray` tests: loopback only, 8 logical CPUs so that fractional-CPU
    rank actors of several replicas fit on a 2-core machine."""
    import ray

    from runtime.replica.local_ray import start_local_ray

    start_local_ray(num_cpus=8, log_to_driver=False)  # our own instance even if another cluster runs here
    yield ray
    ray.shutdown()
