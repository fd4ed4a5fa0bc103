"""Fused INT4 MoE: slot alignment, and every backend against the fp32 reference.

Routing cases: experts with zero tokens, ids owned by other expert-parallel ranks (outside this rank's slice)
and -1 slots, which must contribute nothing. Tolerances as in test_w4a16 (bf16: atol 1e-2, rtol 1.6e-2); the
kernels also round the SiLU·mul activation to bf16, which stays well inside them at these sizes.
"""

import pytest
import torch

import kernels
from kernels.moe import align_slots
from tests.kernels.parity import assert_parity, random_int4

BF16_TOL = {"atol": 1e-2, "rtol": 1.6e-2}
EXPERTS, HIDDEN, INTER, TOP_K = 4, 64, 32, 2
OFFSET = 4  # this rank owns global experts 4..7
TOKENS = [1, 3, 17]


def _experts(seed=0):
    generator = torch.Generator().manual_seed(seed)
    w13 = [random_int4(2 * INTER, HIDDEN, generator=generator) for _ in range(EXPERTS)]
    w2 = [random_int4(HIDDEN, INTER, generator=generator) for _ in range(EXPERTS)]
    return kernels.prepare_experts(torch.stack([p for p, _ in w13]), torch.stack([s for _, s in w13]),
                                   torch.stack([p for p, _ in w2]), torch.stack([s for _, s in w2]))


def _routing(tokens, seed=0):
    """Ids drawn from global experts 0..11 (a third local) and -1; local expert 6 (global) never chosen."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(-1, 12, (tokens, TOP_K), generator=generator)
    ids[ids == OFFSET + 2] = OFFSET + 1  # global 6 gets zero tokens
    ids[0, 0] = OFFSET  # at least one local slot
    weights = torch.rand(tokens, TOP_K, generator=generator)
    hidden = torch.randn(tokens, HIDDEN, generator=generator).to(torch.bfloat16)
    return hidden, ids, weights


def test_align_slots_groups_owned_slots_by_expert_in_padded_blocks():
    ids = torch.tensor([[5, 4], [9, 5], [-1, 5], [0, 7]])  # slots 0..7; local = id - 4
    sorted_slots, block_experts = align_slots(ids, num_experts=4, expert_offset=4, block_m=2)
    pad = ids.numel()
    blocks = sorted_slots.view(-1, 2).tolist()
    used = [(e, b) for e, b in zip(block_experts.tolist(), blocks, strict=True) if e >= 0]
    assert used == [(0, [1, pad]), (1, [0, 3]), (1, [5, pad]), (3, [7, pad])]
    assert all(b == [pad, pad] for e, b in zip(block_experts.tolist(), blocks, strict=True) if e < 0)


@pytest.mark.parametrize("backend", ["triton", "cpu"])
@pytest.mark.parametrize("tokens", TOKENS)
def test_fused_moe_matches_reference(backend, tokens):
    experts = _experts()
    hidden, ids, weights = _routing(tokens, seed=tokens)
    expected = kernels.moe_reference(hidden, ids, weights, experts, expert_offset=OFFSET)
    with kernels.use_backend(backend):
        out = kernels.fused_moe(hidden, ids, weights, experts, expert_offset=OFFSET)
    assert out.shape == hidden.shape and out.dtype == hidden.dtype
    assert_parity(out, expected, **BF16_TOL)


@pytest.mark.parametrize("backend", ["reference", "triton", "cpu"])
def test_an_fp32_out_dtype_returns_the_sum_before_its_rounding_to_the_hiddens_dtype(backend):
    # expert parallelism adds the ranks' fp32 sums and rounds once, as one rank holding every expert does
    experts = _experts()
    hidden, ids, weights = _routing(17, seed=17)
    with kernels.use_backend(backend):
        rounded = kernels.fused_moe(hidden, ids, weights, experts, expert_offset=OFFSET)
        summed = kernels.fused_moe(hidden, ids, weights, experts, expert_offset=OFFSET, out_dtype=torch.float32)
    assert summed.dtype == torch.float32 and not torch.equal(summed, summed.to(hidden.dtype).float())
    assert torch.equal(summed.to(hidden.dtype), rounded)


def test_reference_equals_per_token_dense_computation():
    experts = _experts()
    hidden, ids, weights = _routing(3, seed=3)
    dense = torch.zeros(3, HIDDEN)
    for t in range(3):
        for j in range(TOP_K):
            e = int(ids[t, j]) - OFFSET
            if int(ids[t, j]) < 0 or not 0 <= e < EXPERTS:
                continue
            w13 = kernels.pack.dequantize_int4(experts.w13_packed[e], experts.w13_scale[e], dtype=torch.float32)
            w2 = kernels.pack.dequantize_int4(experts.w2_packed[e], experts.w2_scale[e], dtype=torch.float32)
            gate, up = (hidden[t].float() @ w13.t()).chunk(2)
            dense[t] += weights[t, j] * (torch.nn.functional.silu(gate) * up) @ w2.t()
    assert_parity(kernels.moe_reference(hidden, ids, weights, experts, expert_offset=OFFSET),
                  dense.to(torch.bfloat16), **BF16_TOL)


@pytest.mark.parametrize("backend", ["triton", "cpu"])
def test_tokens_routed_only_to_other_ranks_get_zeros(backend):
    experts = _experts()
    hidden, _, weights = _routing(3)
    ids = torch.tensor([[0, 1], [-1, 9], [3, -1]])
    with kernels.use_backend(backend):
        out = kernels.fused_moe(hidden, ids, weights, experts, expert_offset=OFFSET)
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("backend", ["reference", "triton", "cpu"])
def test_an_empty_batch_gives_an_empty_output(backend):
    # a rank can be handed no tokens (an empty step, expert parallelism): [0, D] out, no error
    experts = _experts()
    hidden = torch.zeros(0, HIDDEN, dtype=torch.bfloat16)
    with kernels.use_backend(backend):
        out = kernels.fused_moe(hidden, torch.zeros(0, TOP_K, dtype=torch.int64), torch.zeros(0, TOP_K), experts)
    assert out.shape == (0, HIDDEN) and out.dtype == hidden.dtype


def test_invalid_routing_raises_value_errors():
    experts = _experts()
    hidden, ids, weights = _routing(3)
    with pytest.raises(ValueError, match="topk_ids"):
        kernels.fused_moe(hidden, ids.float(), weights, experts)
    with pytest.raises(ValueError, match="hidden must be"):
        kernels.fused_moe(hidden[:, :32].contiguous(), ids, weights, experts)
    with pytest.raises(ValueError, match="contiguous"):
        kernels.fused_moe(hidden, ids.t().contiguous().t(), weights, experts)
    with pytest.raises(ValueError, match="must stack the same experts"):
        kernels.prepare_experts(experts.w13_packed, experts.w13_scale, experts.w2_packed[:2], experts.w2_scale[:2])
