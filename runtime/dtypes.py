"""The dtype a model computes in. "auto" (the default everywhere) is bfloat16 where the hardware multiplies BF16
natively (a CUDA GPU that supports it, a CPU with AVX512-BF16 or AMX) or, on a CPU without a native kernel for FP32
activations on INT4 weights, where the checkpoint's weights are INT4; float32 elsewhere.

On a CPU without native BF16 every BF16 matmul converts its operands in software. Measured on a 2-core AVX2-only
EPYC with the embedded 0.5B model (scripts/bench_dtype.py), float32 against bfloat16: prefill 4.97x, decode 0.85x at
batch 1 (it reads twice the weight bytes) and 1.19x at batch 8. An agent's steps are mostly prefill (tool outputs,
pages), so float32 wins there by far. For INT4 weights it depends on the CPU kernels (kernels/cpu_int4.py): with the
native AVX2 kernel, which multiplies FP32 activations, the model with INT4 MLPs (scripts/quantize.py) in float32
against bfloat16 prefills at 1.40x and decodes at 0.80x (batch 1) and 0.95x (batch 8); without it float32
activations dequantize every weight on every call: prefill 1.87x, decode 0.07x and 0.25x.
"""

import logging

import torch

from kernels import cpu_native

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


def fp32_int4_kernel() -> bool:
    """Whether this CPU has a native kernel for FP32 activations on INT4 weights (kernels/cpu_native.py: AVX2)."""
    found = cpu_native.native_kernel()
    return found is not None and found[0].takes(torch.float32)


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device = "cpu", int4_weights: bool = False,
                  ) -> torch.dtype:
    """A torch dtype from "auto", a name in DTYPES, or a torch dtype (returned as is). `int4_weights`: the model's
    checkpoint has INT4 weights (`has_int4_weights`)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == AUTO:
        native = native_bf16(device)
        for_int4 = not native and int4_weights and torch.device(device).type == "cpu" and not fp32_int4_kernel()
        chosen = torch.bfloat16 if native or for_int4 else torch.float32
        log.info("dtype auto: %s (%s)", chosen, "BF16 in hardware" if native else
                 "INT4 weights, and this CPU's INT4 kernels take BF16 activations only" if for_int4 else
                 "no BF16 in hardware")
        return chosen
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPE_CHOICES)}")
    return DTYPES[dtype]
