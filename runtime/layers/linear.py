"""Dense linears that compute a few rows on a CPU as weight @ x.T.

nn.Linear computes x @ W.T. For a few rows in FP32, MKL's GEMM in that form is 2-4x slower than the same product
with the weight as the left operand, W @ x.T: on 2 AVX2 cores (torch 2.13, MKL 2024.2) at 8 rows, 4864 x 896
takes 6.0 ms against 3.0 ms, and the 151936 x 896 output layer 251 ms against 65 ms. Decoding a batch of 8 spent
most of its time there. The gain shrinks with the rows (1.3-2x at 64) and is gone near 256, so prefill chunks keep
F.linear; one row is a matrix-vector product, as fast either way; small weights (896 x 896, 128 x 896) gain
nothing. `scripts/bench_cpu_decode.py` measures both forms side by side, and an engine with each.
Other devices and dtypes keep F.linear: the rule was measured on FP32 CPUs only."""

import torch
import torch.nn.functional as F
from torch import nn

SKINNY_MAX_ROWS = 64  # the weight-left form computes 2 to this many rows ...
MIN_WEIGHT_NUMEL = 1 << 20  # ... of weights this large (4 MiB in FP32) or larger


def uses_weight_left(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.numel() >= MIN_WEIGHT_NUMEL
            and x.shape[-1] < x.numel() <= SKINNY_MAX_ROWS * x.shape[-1])


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    # x [..., K], weight [N, K], bias [N] or None -> [..., N]
    if not uses_weight_left(x, weight):
        return F.linear(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1])  # [M, K]
    out = weight @ rows.t() if bias is None else torch.addmm(bias.unsqueeze(1), weight, rows.t())  # [N, M]
    return out.t().contiguous().reshape(*x.shape[:-1], weight.shape[0])


class Linear(nn.Linear):
    """nn.Linear (same parameters and checkpoint names) whose forward is `linear` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
