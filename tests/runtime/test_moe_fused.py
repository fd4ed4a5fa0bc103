"""The MoE layer's INT4 experts: its fused path (kernels.fused_moe) against its per-expert loop, on hand-made
routing with experts that get no token and experts owned by another expert-parallel rank.

fp32: both paths dequantise the same INT4 weights and sum in fp32; only the order of the additions differs.
bf16: both sum in fp32; the loop multiplies by gate and up apart, the fused path by them stacked, which a kernel may
block differently (equal on an AVX2 CPU), so they may differ by bf16 rounding.
"""

import pytest
import torch

import kernels
from runtime.distributed import ExpertParallelMoE, expert_slice
from runtime.layers.int4_linear import Int4Linear
from runtime.layers.moe import MoE, MoEDims
from tests.kernels.parity import assert_parity, random_int4

DIMS = MoEDims(hidden_size=64, moe_intermediate_size=32, n_routed_experts=16, num_experts_per_tok=4, n_group=4,
               topk_group=2, n_shared_experts=1, norm_topk_prob=True, routed_scaling_factor=2.827,
               int4_group_size=32)
TOKENS = 9
FP32_TOL = dict(atol=1e-5, rtol=1e-5)
BF16_TOL = dict(atol=2e-2, rtol=1.6e-2)
RANK_SLICE = range(4, 12)  # rank 1 of EP = 2
IDLE_EXPERT = 6  # local to RANK_SLICE, never routed to
BACKENDS = ["cpu", "reference", "triton"]  # triton runs in its interpreter on CPU (tests/conftest.py)


def random_int4_moe(dtype: torch.dtype = torch.float32, dims: MoEDims = DIMS,
                    gen: torch.Generator | None = None) -> MoE:
    """A MoE layer of INT4 experts with random weights (seed 0 unless `gen` is given)."""
    moe = MoE(dims)
    gen = gen or torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in moe.modules():
            if isinstance(module, Int4Linear):
                packed, scale = random_int4(module.out_features, module.in_features, generator=gen)
                module.weight_packed.copy_(packed)
                module.weight_scale.copy_(scale)
        for tensor in moe.parameters():
            tensor.copy_(torch.randn(tensor.shape, generator=gen) / tensor.shape[-1] ** 0.5)
    return moe.to(dtype)


def _rank_moe(full: MoE, experts: range) -> MoE:
    part = MoE(DIMS, experts).to(full.gate.weight.dtype)
    part.load_state_dict({k: v for k, v in full.state_dict().items() if k in part.state_dict()})
    return part


def _routing(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [T, D], router weights fp32 [T, K], expert ids [T, K] drawn from all 16 experts except IDLE_EXPERT."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.stack([torch.randperm(DIMS.n_routed_experts - 1, generator=gen)[:DIMS.num_experts_per_tok]
                       for _ in range(TOKENS)])  # [T, K] distinct per token
    ids = torch.where(ids >= IDLE_EXPERT, ids + 1, ids)
    ids[0] = torch.tensor([4, 5, 7, 0])  # some local slots for certain
    weights = torch.rand(TOKENS, DIMS.num_experts_per_tok, generator=gen)  # [T, K]
    x = torch.randn(TOKENS, DIMS.hidden_size, generator=gen).to(dtype)  # [T, D]
    return x, weights, ids


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("local", [None, RANK_SLICE], ids=["all_experts", "rank_slice"])
def test_fused_path_equals_the_loop_fp32(backend, local):
    full = random_int4_moe()
    moe = full if local is None else _rank_moe(full, local)
    x, weights, ids = _routing(torch.float32)
    assert not (ids == IDLE_EXPERT).any()
    with torch.no_grad():
        expected = moe.routed_loop(x, weights, ids)
        with kernels.use_backend(backend):
            actual = moe.routed_fused(x, weights, ids)
    assert actual.dtype == torch.float32
    assert_parity(actual, expected, **FP32_TOL)


def test_fused_path_equals_the_loop_bf16_on_the_cpu_kernel():
    moe = _rank_moe(random_int4_moe(torch.bfloat16), RANK_SLICE)
    x, weights, ids = _routing(torch.bfloat16)
    with torch.inference_mode():
        actual, expected = moe.routed_fused(x, weights, ids), moe.routed_loop(x, weights, ids)
    assert actual.dtype == expected.dtype == torch.float32  # the routed sums before their rounding to bf16
    assert_parity(actual, expected, **BF16_TOL)


def test_tokens_routed_only_to_other_ranks_get_zeros():
    moe = _rank_moe(random_int4_moe(), RANK_SLICE)
    x, weights, _ = _routing(torch.float32)
    ids = torch.tensor([[0, 1, 2, 3], [12, 13, 14, 15]]).repeat(TOKENS // 2 + 1, 1)[:TOKENS]  # [T, K] none local
    with torch.no_grad():
        assert torch.equal(moe.routed_fused(x, weights, ids), torch.zeros_like(x))


def test_forward_takes_the_fused_path_and_holds_the_packed_weights_once():
    moe = random_int4_moe()
    x, _, _ = _routing(torch.float32)
    with torch.no_grad():
        weights, ids = moe.gate(x)
        expected = moe.routed_loop(x, weights, ids) + moe.shared_experts(x)
        assert_parity(moe(x), expected, **FP32_TOL)
    stacked, _ = moe._stacked
    for e, expert in enumerate(moe.experts.values()):  # each expert's buffers now view the stacks
        assert expert.gate_proj.weight_packed.data_ptr() == stacked.w13_packed[e].data_ptr()
        assert expert.down_proj.weight_scale.data_ptr() == stacked.w2_scale[e].data_ptr()


def test_reloading_weights_reaches_the_fused_path():
    moe, other = random_int4_moe(), random_int4_moe()
    with torch.no_grad():
        other.experts["3"].up_proj.weight_scale.mul_(-2)  # another checkpoint for expert 3
    x, weights, ids = _routing(torch.float32)
    with torch.no_grad():
        before = moe.routed_fused(x, weights, ids)  # builds the stacks
        moe.load_state_dict(other.state_dict())  # writes into the views
        after = moe.routed_fused(x, weights, ids)
        assert_parity(after, other.routed_loop(x, weights, ids), **FP32_TOL)
    assert not torch.allclose(before, after)


def test_casting_the_layer_restacks_its_experts():
    moe = _rank_moe(random_int4_moe(), RANK_SLICE)
    x, weights, ids = _routing(torch.float32)
    with torch.no_grad():
        moe.routed_fused(x, weights, ids)  # stacks with fp32 scales
        moe.to(torch.bfloat16)
        x = x.to(torch.bfloat16)
        actual = moe.routed_fused(x, weights, ids)
        assert moe._stacked[0].w13_scale.dtype == torch.bfloat16
        assert_parity(actual, moe.routed_loop(x, weights, ids), **BF16_TOL)


@pytest.mark.parametrize("ep", [2, 4])
def test_ranks_partial_int4_outputs_sum_to_the_whole_layer(ep):
    full = random_int4_moe()
    x, _, _ = _routing(torch.float32)
    with torch.no_grad():
        wrapped = [ExpertParallelMoE(_rank_moe(full, expert_slice(DIMS.n_routed_experts, ep, r))) for r in range(ep)]
        shared = wrapped[0].shared_experts(x)  # [T, D]
        # without a process group each wrapper returns its own share plus the shared expert
        routed = sum(w(x) - shared for w in wrapped)  # [T, D]
        assert_parity(routed + shared, full(x), **FP32_TOL)


@pytest.mark.parametrize("tile", [None, 8], ids=["fused", "loop"])
def test_an_empty_step_gives_an_empty_output(tile):
    # no tokens (a rank handed none, as the kernels allow since 5514760): [0, D], router included
    moe = _rank_moe(random_int4_moe(), RANK_SLICE)
    moe.tile = tile
    with torch.no_grad():
        out = moe(torch.zeros(0, DIMS.hidden_size))
    assert out.shape == (0, DIMS.hidden_size)
