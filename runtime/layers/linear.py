"""Dense linears that compute a few rows on a CPU: in FP32 as weight @ x.T, in BF16 through the native kernel.

nn.Linear computes x @ W.T. For a few rows in FP32, MKL's GEMM in that form is 2-4x slower than the same product
with the weight as the left operand, W @ x.T: on 2 AVX2 cores (torch 2.13, MKL 2024.2) at 8 rows, 4864 x 896
takes 6.0 ms against 3.0 ms, and the 151936 x 896 output layer 251 ms against 65 ms. Decoding a batch of 8 spent
most of its time there. The gain shrinks with the rows (1.3-2x at 64) and is gone near 256, so prefill chunks keep
F.linear; one row is a matrix-vector product, as fast either way; small weights (896 x 896, 128 x 896) gain
nothing. `scripts/bench_cpu_decode.py` measures both forms side by side, and an engine with each.
In BF16 on CPUs with AVX512-BF16, up to 8 rows (decode steps) run on kernels/bf16_skinny.py, which streams the
weights at up to twice the rate torch's BF16 GEMM does (1.32-1.53x a linear at one row, 1.13-1.44x at eight, the
embedded model's shapes; `scripts/bench_cpu_decode.py`); more rows (prefill) keep F.linear. Other devices and dtypes
keep F.linear."""

import torch
import torch.nn.functional as F
from torch import nn

from kernels import bf16_skinny

SKINNY_MAX_ROWS = 64  # the weight-left form computes 2 to this many rows ...
MIN_WEIGHT_NUMEL = 1 << 20  # ... of weights this large (4 MiB in FP32) or larger
BF16_KERNEL_MAX_ROWS = 8  # BF16 rows the native kernel computes (decode steps); prefill chunks keep torch's GEMM


def uses_weight_left(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.numel() >= MIN_WEIGHT_NUMEL
            and x.shape[-1] < x.numel() <= SKINNY_MAX_ROWS * x.shape[-1])


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    # x [..., K], weight [N, K], bias [N] or None -> [..., N]
    if x.numel() <= BF16_KERNEL_MAX_ROWS * x.shape[-1] and bf16_skinny.takes(x, weight, bias):
        return bf16_skinny.bf16_skinny_linear(x, weight, bias)
    if not uses_weight_left(x, weight):
        return F.linear(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1])  # [M, K]
    out = weight @ rows.t() if bias is None else torch.addmm(bias.unsqueeze(1), weight, rows.t())  # [N, M]
    return out.t().contiguous().reshape(*x.shape[:-1], weight.shape[0])


class Linear(nn.Linear):
    """nn.Linear (same parameters and checkpoint names) whose forward is `linear` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
