"""The dtype a model computes in. "auto" (the default everywhere) is bfloat16 where the hardware multiplies BF16
natively (a CUDA GPU that supports it, a CPU with AVX512-BF16 or AMX) or, on a CPU, where the checkpoint's weights
are INT4; float32 elsewhere.

On a CPU without native BF16 every BF16 matmul converts its operands in software. Measured on a 2-core AVX2-only
EPYC with the embedded 0.5B model (scripts/bench_dtype.py), float32 against bfloat16: prefill 4.97x, decode 0.85x at
batch 1 (it reads twice the weight bytes) and 1.19x at batch 8. An agent's steps are mostly prefill (tool outputs,
pages), so float32 wins there by far. INT4 weights are the exception: the CPU's W4A16 kernels take 16-bit
activations, and float32 ones fall back to dequantizing every weight on every call. The same machine, the model
with INT4 MLPs (scripts/quantize.py), float32 against bfloat16: prefill 1.87x, decode 0.07x at batch 1 and 0.25x at
batch 8.
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


def has_int4_weights(config: dict) -> bool:
    """Whether a checkpoint's config.json quantizes some weights (compressed-tensors INT4, the only kind we load)."""
    return config.get("quantization_config") is not None


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device = "cpu", int4_weights: bool = False,
                  ) -> torch.dtype:
    """A torch dtype from "auto", a name in DTYPES, or a torch dtype (returned as is). `int4_weights`: the model's
    checkpoint has INT4 weights (`has_int4_weights`)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == AUTO:
        native, for_int4 = native_bf16(device), int4_weights and torch.device(device).type == "cpu"
        chosen = torch.bfloat16 if native or for_int4 else torch.float32
        log.info("dtype auto: %s (%s)", chosen, "BF16 in hardware" if native else
                 "INT4 weights: the CPU kernels take BF16 activations" if for_int4 else "no BF16 in hardware")
        return chosen
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPE_CHOICES)}")
    return DTYPES[dtype]
