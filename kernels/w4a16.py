"""W4A16 linear layer: y = x @ dequant(W)^T + bias, with W in the compressed-tensors INT4 layout.

Shapes: M = rows (all leading dimensions of x flattened), N = out features, K = in features, G = group size.
  x       [..., K]    bfloat16 / float16 / float32, contiguous
  packed  [N, K/8]    int32 (kernels/pack.py layout)
  scale   [N, K/G]    bfloat16 / float16 / float32
  y       [..., N]    x's dtype
Backends (kernels/backend.py): reference, triton (CUDA, or the interpreter on CPU), cpu.
"""

from dataclasses import dataclass

import torch

from kernels.backend import KernelInputError, resolve_backend
from kernels.cpu_int4 import CpuInt4Layout, cpu_linear, prepare_cpu, runs
from kernels.pack import DEFAULT_GROUP_SIZE, PACK_FACTOR, dequantize_int4

ACTIVATION_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@dataclass(frozen=True, eq=False)
class Int4Weight:
    """One INT4 weight, validated and repacked once for the device's kernel (`prepare_int4`)."""

    packed: torch.Tensor  # int32 [N, K/8]
    scale: torch.Tensor  # [N, K/G]
    group_size: int
    cpu: CpuInt4Layout | None  # the CPU kernel's layout, when the weight lives on the CPU

    @property
    def out_features(self) -> int:
        return self.packed.shape[0]

    @property
    def in_features(self) -> int:
        return self.packed.shape[1] * PACK_FACTOR


def _check_weight(packed: torch.Tensor, scale: torch.Tensor, group_size: int) -> None:
    if group_size <= 0 or group_size % PACK_FACTOR:
        raise KernelInputError(f"group size must be a positive multiple of {PACK_FACTOR}, got {group_size}")
    if packed.dtype != torch.int32 or packed.dim() != 2:
        raise KernelInputError(f"packed must be int32 [N, K/8], got {packed.dtype} {tuple(packed.shape)}")
    n, k = packed.shape[0], packed.shape[1] * PACK_FACTOR
    if k % group_size:
        raise KernelInputError(f"K={k} is not a multiple of the group size {group_size}")
    if scale.dtype not in ACTIVATION_DTYPES or tuple(scale.shape) != (n, k // group_size):
        raise KernelInputError(f"scale must be a float tensor [{n}, {k // group_size}], "
                               f"got {scale.dtype} {tuple(scale.shape)}")
    if not (packed.is_contiguous() and scale.is_contiguous()):
        raise KernelInputError("packed and scale must be contiguous")
    if packed.device != scale.device:
        raise KernelInputError(f"packed is on {packed.device} but scale on {scale.device}")


def _check_activation(x: torch.Tensor, weight: Int4Weight, bias: torch.Tensor | None) -> None:
    if x.dtype not in ACTIVATION_DTYPES:
        raise KernelInputError(f"x must be bfloat16, float16 or float32, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] != weight.in_features:
        raise KernelInputError(f"x [..., K] must have K={weight.in_features}, got {tuple(x.shape)}")
    if x.shape[-1] % weight.group_size:
        raise KernelInputError(f"K={x.shape[-1]} is not a multiple of the group size {weight.group_size}")
    if not x.is_contiguous():
        raise KernelInputError("x must be contiguous (call .contiguous() on the caller's side)")
    if x.device != weight.packed.device:
        raise KernelInputError(f"x is on {x.device} but the weight on {weight.packed.device}")
    if bias is not None and (tuple(bias.shape) != (weight.out_features,) or bias.device != x.device):
        raise KernelInputError(f"bias must be [{weight.out_features}] on {x.device}, got {tuple(bias.shape)}")


def prepare_int4(packed: torch.Tensor, scale: torch.Tensor, group_size: int = DEFAULT_GROUP_SIZE) -> Int4Weight:
    """Validate packed int32 [N, K/8] + scale [N, K/G] and repack them once for this device (load time)."""
    _check_weight(packed, scale, group_size)
    cpu = prepare_cpu(packed, scale, group_size) if packed.device.type == "cpu" else None
    return Int4Weight(packed, scale, group_size, cpu)


def w4a16_reference(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor,
                    group_size: int = DEFAULT_GROUP_SIZE, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Ground truth: dequantise W to fp32, matmul in fp32, cast to x's dtype. x [..., K] -> y [..., N]."""
    w = dequantize_int4(packed, scale, group_size, dtype=torch.float32)  # [N, K]
    y = x.float() @ w.t()  # [..., N]
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def int4_linear(x: torch.Tensor, weight: Int4Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y [..., N] = x [..., K] @ dequant(weight)^T + bias, on the backend chosen for x's device."""
    _check_activation(x, weight, bias)
    backend = resolve_backend(x.device)
    if backend == "reference":
        return w4a16_reference(x, weight.packed, weight.scale, weight.group_size, bias)
    rows = x.view(-1, x.shape[-1])  # [M, K]
    if backend == "triton":
        from kernels.w4a16_triton import w4a16_gemm  # lazy: triton is imported only when it runs

        y = w4a16_gemm(rows, weight.packed, weight.scale, weight.group_size)  # [M, N]
    elif weight.cpu is not None and runs(weight.cpu, rows):
        y = cpu_linear(rows, weight.cpu)  # [M, N]
    else:  # no CPU kernel for this shape or dtype: the reference is the correct fallback
        return w4a16_reference(x, weight.packed, weight.scale, weight.group_size, bias)
    if bias is not None:
        y = (y + bias).to(x.dtype)  # a bias of another dtype would promote y out of x's dtype, unlike the reference
    return y.view(*x.shape[:-1], weight.out_features)


def w4a16_linear(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor,
                 group_size: int = DEFAULT_GROUP_SIZE, bias: torch.Tensor | None = None) -> torch.Tensor:
    """One-off form of `int4_linear`: prepares the weight on every call (layers should call prepare_int4 once)."""
    return int4_linear(x, prepare_int4(packed, scale, group_size), bias)
