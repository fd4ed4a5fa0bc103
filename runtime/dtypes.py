"""The dtype a model computes in. "auto" (the default everywhere) is bfloat16 where the hardware multiplies BF16
natively (a CUDA GPU that supports it, a CPU with AVX512-BF16 or AMX) and float32 elsewhere.

On a CPU without native BF16 every BF16 matmul converts its operands in software. Measured on a 2-core AVX2-only
EPYC with the embedded 0.5B model (scripts/bench_dtype.py), float32 against bfloat16: prefill 4.97x, decode 0.85x at
batch 1 (it reads twice the weight bytes) and 1.19x at batch 8. An agent's steps are mostly prefill (tool outputs,
pages), so float32 wins there by far.
"""

import logging

import torch

log = logging.getLogger(__name__)

AUTO = "auto"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DTYPE_CHOICES = (AUTO, *DTYPES)


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether `device` multiplies BF16 in hardware."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return True  # other accelerators (xpu, mps, ...) are built for half precision
    cpu = torch.cpu  # private probes (torch >= 2.3): false when unknown, which costs speed, never correctness
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, probe, lambda: False)() for probe in probes)


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device = "cpu") -> torch.dtype:
    """A torch dtype from "auto", a name in DTYPES, or a torch dtype (returned as is)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == AUTO:
        chosen = torch.bfloat16 if native_bf16(device) else torch.float32
        log.info("dtype auto: %s (%s BF16 in hardware)", chosen, "with" if chosen is torch.bfloat16 else "no")
        return chosen
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPE_CHOICES)}")
    return DTYPES[dtype]
