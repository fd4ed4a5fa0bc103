"""MoE across expert-parallel ranks: every rank holds all tokens of the step (attention is replicated), routes them
all, runs only its own experts, and the partial routed outputs are summed over the group with one all-reduce.

Shapes: T = tokens of the step, D = hidden.
Why an all-reduce and not all-to-all: with replicated attention every rank already has every token, so there is
nothing to dispatch; the combine is a sum of [T, D] partials. Per token and MoE layer each rank sends and receives
2 * (EP - 1) / EP * D values (ring all-reduce). An all-to-all pays off once attention is data-parallel (each rank its
own tokens): see docs/ep.md for the volumes at EP = 8 and 64. The batch-invariant mode gathers the partials and adds
them in rank order instead (`ExpertParallelMoE.tile`).
"""

import torch
import torch.distributed as dist
from torch import nn

from runtime.layers.moe import MoE


class ExpertParallelError(ValueError):
    """Experts cannot be split as asked (the message names the sizes)."""


def expert_slice(n_experts: int, ep_size: int, rank: int) -> range:
    """The contiguous block of routed experts rank `rank` of `ep_size` owns."""
    if ep_size <= 0 or n_experts % ep_size:
        raise ExpertParallelError(f"{n_experts} routed experts do not split evenly over ep_size={ep_size}")
    if not 0 <= rank < ep_size:
        raise ExpertParallelError(f"rank {rank} outside [0, {ep_size})")
    per_rank = n_experts // ep_size
    return range(rank * per_rank, (rank + 1) * per_rank)


class ExpertParallelMoE(nn.Module):
    """A MoE built with this rank's experts only; its shared experts move here so they are added once, after the sum
    of the ranks' routed partials (every rank computes them, on the same tokens, so no exchange is needed)."""

    def __init__(self, moe: MoE):
        super().__init__()
        self.shared_experts = moe.shared_experts
        moe.shared_experts = None
        self.local = moe
        # set by the batch-invariant mode: the ranks' shares are then added in rank order. A ring all-reduce adds an
        # element's shares in an order set by the element's place in the buffer (its chunk), so by the token's row
        # and the step's size: over 3+ ranks a token's FP32 sum moved with the batch.
        self.tile: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x [T, D] -> [T, D]
        routed = self.local.routed(x)  # [T, D] fp32: this rank's experts' share, rounded once after the sum
        if dist.is_initialized() and dist.get_world_size() > 1:
            routed = self._sum_over_ranks(routed)
        out = routed.to(x.dtype)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return out

    def _sum_over_ranks(self, share: torch.Tensor) -> torch.Tensor:
        # share [T, D] fp32 -> the sum of every rank's [T, D], the same on every rank
        if self.tile is None:
            dist.all_reduce(share)
            return share
        shares = [torch.empty_like(share) for _ in range(dist.get_world_size())]  # EP x [T, D]
        dist.all_gather(shares, share)  # (EP - 1) / EP * EP * T * D values in: EP / 2 times an all-reduce's
        total = shares[0]
        for other in shares[1:]:
            total = total + other
        return total


def shard_moe_layers(model: nn.Module) -> int:
    """Wrap every MoE of `model` (built with its local experts) so its output is summed over the group; returns how
    many were wrapped. Call after loading (parameter names change)."""
    targets = [name for name, module in model.named_modules() if isinstance(module, MoE)]
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, ExpertParallelMoE(getattr(parent, child)))
    return len(targets)


def resident_expert_bytes(model: nn.Module) -> int:
    """Bytes of the routed experts this process holds (parameters and buffers, packed INT4 as stored)."""
    total = 0
    for module in model.modules():
        if isinstance(module, MoE):
            tensors = [*module.experts.parameters(), *module.experts.buffers()]
            total += sum(t.numel() * t.element_size() for t in tensors)
    return total
