"""DeepSeek-V3 / Kimi K2 mixture of experts: sigmoid router with `noaux_tc` group-limited top-k, routed SwiGLU
experts (INT4 or dense), and always-on shared experts.

Shapes: T = tokens, D = hidden, E = routed experts, G = expert groups, K = experts per token, I = expert width.
Only the experts listed in `local_experts` are built (expert parallelism): a token routed to another rank's expert
gets nothing from it here; the ranks' partial sums add up to the full layer. INT4 experts run in one fused call
(`kernels.fused_moe` on the kernels' backend dispatch); dense experts run one module at a time, and so do INT4
experts in the batch-invariant mode (runtime/layers/batch_invariant.py), where each expert's linears compute the
tokens routed to it in fixed row tiles and the router's scores are computed in the same tiles: the fused call's
per-expert products, and an F.linear over all the step's tokens, depend on how many tokens share the step.
"""

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kernels import Int4Experts, fused_moe, prepare_experts
from runtime.layers.batch_invariant import fixed_tile_linear
from runtime.layers.int4_linear import Int4Linear
from runtime.layers.linear import Linear

GROUP_SCORE_TOP = 2  # a group's score is the sum of its two best experts (DeepSeek-V3's rule)
NORM_EPSILON = 1e-20  # keeps the top-k renormalisation finite
# torch's sigmoid rounds a score in its vector body and in its scalar tail differently (1 ulp): in the batch-invariant
# mode a row's scores are padded to whole blocks of this many values, so each lands in the same lane in any batch
SIGMOID_BLOCK = 64


@dataclass(frozen=True)
class MoEDims:
    hidden_size: int
    moe_intermediate_size: int
    n_routed_experts: int
    num_experts_per_tok: int
    n_group: int
    topk_group: int
    n_shared_experts: int
    norm_topk_prob: bool
    routed_scaling_factor: float
    int4_group_size: int | None = None  # routed experts are INT4 pack-quantized with this group size; None = dense

    def __post_init__(self):
        if self.n_group <= 0 or self.n_routed_experts % self.n_group:
            raise ValueError(f"n_routed_experts={self.n_routed_experts} must split into n_group={self.n_group} groups")
        if not 0 < self.topk_group <= self.n_group:
            raise ValueError(f"topk_group={self.topk_group} must lie in [1, n_group={self.n_group}]")
        if self.experts_per_group < GROUP_SCORE_TOP:
            raise ValueError(f"expert groups need >= {GROUP_SCORE_TOP} experts, got {self.experts_per_group}")
        if not 0 < self.num_experts_per_tok <= self.topk_group * self.experts_per_group:
            raise ValueError(f"num_experts_per_tok={self.num_experts_per_tok} exceeds the experts in topk_group groups")

    @property
    def experts_per_group(self) -> int:
        return self.n_routed_experts // self.n_group


class SwiGLUMLP(nn.Module):
    """down_proj(silu(gate_proj(x)) * up_proj(x)); the dense MLP, the shared experts and each routed expert."""

    def __init__(self, hidden_size: int, intermediate_size: int, int4_group_size: int | None = None):
        super().__init__()

        def linear(n_in: int, n_out: int) -> nn.Module:
            if int4_group_size is None:
                return Linear(n_in, n_out, bias=False)
            return Int4Linear(n_in, n_out, int4_group_size)

        self.gate_proj = linear(hidden_size, intermediate_size)
        self.up_proj = linear(hidden_size, intermediate_size)
        self.down_proj = linear(intermediate_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x [T, D] -> [T, D]
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class TopKRouter(nn.Module):
    """Sigmoid scores; `e_score_correction_bias` shifts them for choosing groups and experts only, the weights
    are the unbiased scores of the chosen experts (renormalised if norm_topk_prob, then scaled)."""

    def __init__(self, dims: MoEDims):
        super().__init__()
        self.dims = dims
        self.weight = nn.Parameter(torch.zeros(dims.n_routed_experts, dims.hidden_size))
        self.register_buffer("e_score_correction_bias", torch.zeros(dims.n_routed_experts, dtype=torch.float32))
        # rows per score product in the batch-invariant mode, None: all rows in one. A score that moves by 1e-7
        # with the batch can swap two near-tied experts, and the token's output with them.
        self.tile: int | None = None

    def _apply(self, fn, recurse=True):
        # Like the reference, the correction bias stays fp32 whatever dtype the model is cast to: it decides near-ties.
        super()._apply(fn, recurse)
        self.e_score_correction_bias = self.e_score_correction_bias.float()
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x [T, D] -> weights fp32 [T, K], expert ids int64 [T, K]
        dims, t = self.dims, x.shape[0]
        if self.tile is None:
            scores = F.linear(x.float(), self.weight.float()).sigmoid()  # [T, E]
        else:  # a 16-expert row alone took the tail, in a batch the body: weights 1 ulp apart (tiny Kimi, FP32)
            logits = fixed_tile_linear(x.float(), self.weight.float(), tile=self.tile)  # [T, E]
            experts = logits.shape[1]
            scores = F.pad(logits, (0, -experts % SIGMOID_BLOCK)).sigmoid()[:, :experts]  # [T, E]
        for_choice = scores + self.e_score_correction_bias.float()  # [T, E]
        grouped = for_choice.view(t, dims.n_group, dims.experts_per_group)  # [T, G, E/G]
        group_scores = grouped.topk(GROUP_SCORE_TOP, dim=-1).values.sum(dim=-1)  # [T, G]
        best_groups = group_scores.topk(dims.topk_group, dim=-1).indices  # [T, topk_group]
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, best_groups, True)  # [T, G]
        for_choice = grouped.masked_fill(~keep[:, :, None], float("-inf")).flatten(1)  # [T, E], also for T = 0
        ids = for_choice.topk(dims.num_experts_per_tok, dim=-1).indices  # [T, K]
        weights = scores.gather(1, ids)  # [T, K]
        if dims.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + NORM_EPSILON)
        return weights * dims.routed_scaling_factor, ids


class MoE(nn.Module):
    def __init__(self, dims: MoEDims, local_experts: Iterable[int] | None = None):
        super().__init__()
        local = sorted(set(range(dims.n_routed_experts) if local_experts is None else local_experts))
        if local and not 0 <= local[0] <= local[-1] < dims.n_routed_experts:
            raise ValueError(f"local experts {local} fall outside [0, {dims.n_routed_experts})")
        self.dims = dims
        self.gate = TopKRouter(dims)
        self.experts = nn.ModuleDict(
            {str(e): SwiGLUMLP(dims.hidden_size, dims.moe_intermediate_size, dims.int4_group_size) for e in local}
        )
        self.shared_experts = (
            SwiGLUMLP(dims.hidden_size, dims.moe_intermediate_size * dims.n_shared_experts)
            if dims.n_shared_experts else None
        )
        self._stacked: tuple[Int4Experts, torch.Tensor] | None = None  # (experts, global -> local id [E])
        # set by the batch-invariant mode (with its experts' and router's tiles): INT4 experts run one at a time
        self.tile: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x [T, D] -> [T, D]
        routed = self.routed(x).to(x.dtype)  # [T, D]
        if self.shared_experts is not None:
            routed = routed + self.shared_experts(x)
        return routed

    def routed(self, x: torch.Tensor) -> torch.Tensor:
        """The routed experts' (this rank's) weighted sum, in fp32: expert parallelism adds the ranks' sums before
        the one rounding to x's dtype that a single rank makes. x [T, D] -> [T, D] fp32"""
        weights, ids = self.gate(x)  # [T, K], [T, K]
        if self.dims.int4_group_size is not None and len(self.experts) and self.tile is None:
            return self.routed_fused(x, weights, ids)
        return self.routed_loop(x, weights, ids)

    def routed_loop(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """This rank's routed experts one module at a time (dense experts, and any kind in the batch-invariant
        mode), each token's outputs summed in fp32 in the order of expert ids. -> [T, D] fp32"""
        routed = torch.zeros(x.shape, dtype=torch.float32, device=x.device)  # [T, D]
        for expert_id in ids.unique().tolist():
            if str(expert_id) not in self.experts:  # owned by another expert-parallel rank
                continue
            token_idx, slot = (ids == expert_id).nonzero(as_tuple=True)  # [A], [A]
            out = self.experts[str(expert_id)](x[token_idx]) * weights[token_idx, slot, None]  # [A, D] fp32
            routed.index_add_(0, token_idx, out.float())
        return routed

    def routed_fused(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """This rank's INT4 experts in one `kernels.fused_moe` call (Triton on CUDA, the CPU path on CPU); slots
        routed to other ranks' experts map to -1 and contribute nothing. -> [T, D] fp32.
        On CPU it beat `routed_loop` at every size measured (bf16, one thread, T = 1..512: 1.2-1.7x at the tiny
        Kimi shape, 1.0-1.2x at D = 2048, I = 768, 64 experts): one gate+up GEMM per expert, one host sync."""
        experts, local_index = self._stacked_experts()
        local_ids = local_index[ids]  # [T, K] position in this rank's stack, -1 = another rank's expert
        return fused_moe(x.contiguous(), local_ids, weights.contiguous(), experts, out_dtype=torch.float32)

    def _stacked_experts(self) -> tuple[Int4Experts, torch.Tensor]:
        """The INT4 experts stacked as the kernel wants them (gate rows then up rows), built on first use. Each
        expert's projections are then re-pointed at views of the stacks, so the packed weights are held once and a
        write into any of them (loading) bumps the stacks' version: then, or after .to(), they are stacked again.
        (Buffers replaced without either, e.g. load_state_dict(assign=True), are not noticed.)"""
        if self._stacked is not None and self._stacked_versions == _versions(self._stacked[0]):
            return self._stacked
        projections = [(m.gate_proj, m.up_proj, m.down_proj) for m in self.experts.values()]
        # normal tensors even inside an inference_mode forward, so loading can still write the views afterwards
        with torch.inference_mode(False), torch.no_grad():
            # [E, 2I, D/8] and [E, 2I, D/G]: gate rows, then up rows
            w13_packed = torch.stack([torch.cat([g.weight_packed, u.weight_packed]) for g, u, _ in projections])
            w13_scale = torch.stack([torch.cat([g.weight_scale, u.weight_scale]) for g, u, _ in projections])
            w2_packed = torch.stack([d.weight_packed for _, _, d in projections])  # [E, D, I/8]
            w2_scale = torch.stack([d.weight_scale for _, _, d in projections])  # [E, D, I/G]
        inter = self.dims.moe_intermediate_size
        for e, (gate, up, down) in enumerate(projections):
            gate.weight_packed, up.weight_packed = w13_packed[e, :inter], w13_packed[e, inter:]
            gate.weight_scale, up.weight_scale = w13_scale[e, :inter], w13_scale[e, inter:]
            down.weight_packed, down.weight_scale = w2_packed[e], w2_scale[e]
        local = torch.tensor([int(e) for e in self.experts], device=w13_packed.device)  # [E_local] global ids
        local_index = torch.full((self.dims.n_routed_experts,), -1, dtype=torch.int64, device=local.device)  # [E]
        local_index[local] = torch.arange(len(local), device=local.device)
        experts = prepare_experts(w13_packed, w13_scale, w2_packed, w2_scale, self.dims.int4_group_size)
        self._stacked, self._stacked_versions = (experts, local_index), _versions(experts)
        return self._stacked

    def _apply(self, fn, recurse=True):
        # .to() / to_empty() give the experts new buffers: stack those on next use
        self._stacked = None
        return super()._apply(fn, recurse)


def _versions(experts: Int4Experts) -> tuple[int, ...]:
    return tuple(t._version for t in (experts.w13_packed, experts.w13_scale, experts.w2_packed, experts.w2_scale))
