"""Expert-parallel MoE: the ranks' partial outputs, summed, equal the whole layer (in one process, and over a real
gloo group of processes on loopback)."""

import multiprocessing

import pytest
import torch

from runtime.distributed import (
    ExpertParallelMoE,
    GroupSpec,
    destroy_group,
    expert_slice,
    init_group,
    resident_expert_bytes,
    shard_moe_layers,
)
from runtime.distributed.moe_parallel import ExpertParallelError
from runtime.layers.moe import MoE, MoEDims
from runtime.models.deepseek_v3 import DeepseekV3ForCausalLM
from runtime.replica import serving
from tests.net import free_port

DIMS = MoEDims(hidden_size=32, moe_intermediate_size=16, n_routed_experts=16, num_experts_per_tok=4, n_group=4,
               topk_group=2, n_shared_experts=1, norm_topk_prob=True, routed_scaling_factor=2.827)
FP32_TOL = dict(atol=1e-6, rtol=1e-5)  # only the order of the fp32 additions differs
TINY_MOE_LAYER, TINY_EXPERTS = 1, 16  # the tiny Kimi checkpoint's first MoE layer (INT4 experts) and its experts
# BF16: the ranks add fp32 shares and round once, as one rank does; only the order of the fp32 additions differs, so
# an output may differ (by one bf16 step) only where the fp32 sums straddle a rounding boundary. Measured: none at
# EP 2 and 4; rounding each rank's share to bf16 before the sum (the bug this guards) made 18.9 % differ at EP 2.
BF16_MAX_SHARE_DIFFERING = 0.02
BF16_STEP_TOL = dict(atol=2**-8, rtol=2**-7)


def _full_moe() -> MoE:
    moe = MoE(DIMS)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for tensor in [*moe.parameters(), *moe.buffers()]:
            tensor.copy_(torch.randn(tensor.shape, generator=gen) / tensor.shape[-1] ** 0.5)
    return moe


def _rank_moe(full: MoE, experts: range) -> MoE:
    part = MoE(DIMS, experts)
    part.load_state_dict({k: v for k, v in full.state_dict().items() if k in part.state_dict()})
    return part


@pytest.mark.parametrize("ep", [1, 2, 4, 8])
def test_partial_outputs_of_the_ranks_sum_to_the_whole_layer(ep):
    full = _full_moe()
    x = torch.randn(24, DIMS.hidden_size, generator=torch.Generator().manual_seed(5))  # [T, D]
    wrapped = [ExpertParallelMoE(_rank_moe(full, expert_slice(DIMS.n_routed_experts, ep, r))) for r in range(ep)]
    shared = wrapped[0].shared_experts(x)  # [T, D]
    # without a group each wrapper returns its own share plus the shared expert: take the shares out and add them
    routed = sum(w(x) - shared for w in wrapped)  # [T, D]
    torch.testing.assert_close(routed + shared, full(x), **FP32_TOL)


def test_single_rank_wrapper_is_the_layer_itself():
    full = _full_moe()
    x = torch.randn(8, DIMS.hidden_size, generator=torch.Generator().manual_seed(6))
    expected = full(x)
    holder = torch.nn.Sequential(full)
    assert shard_moe_layers(holder) == 1
    assert torch.equal(holder(x), expected)


def test_resident_expert_bytes_split_evenly():
    full = _full_moe()
    total = resident_expert_bytes(full)
    parts = [resident_expert_bytes(_rank_moe(full, expert_slice(16, 4, r))) for r in range(4)]
    assert parts == [total // 4] * 4


@pytest.mark.parametrize(("experts", "ep", "rank"), [(16, 3, 0), (16, 0, 0), (16, 4, 4), (16, 4, -1)])
def test_expert_slice_rejects_uneven_or_out_of_range(experts, ep, rank):
    with pytest.raises(ExpertParallelError):
        expert_slice(experts, ep, rank)


@pytest.mark.parametrize("ep", [3, 32])  # 16 experts: uneven, and more ranks than experts
def test_a_replica_whose_experts_do_not_split_evenly_is_refused_before_ray_starts(tiny_kimi_path, monkeypatch, ep):
    # else every rank would fail on its own inside its Ray actor, after Ray and the actors started
    def no_ray() -> bool:
        raise AssertionError("Ray was started for experts no ranks can split")
    monkeypatch.setattr(serving, "init_ray", no_ray)
    with pytest.raises(ExpertParallelError, match=f"16 routed experts do not split evenly over ep_size={ep}"):
        serving.start_frontend(tiny_kimi_path, replicas=1, ep=ep)


def test_expert_slices_cover_all_experts_once():
    slices = [expert_slice(384, 8, r) for r in range(8)]
    assert [e for s in slices for e in s] == list(range(384))


def _rank_of_a_group(path: str, ep: int, rank: int, port: int, x: torch.Tensor, results) -> None:
    # one expert-parallel rank in its own process: its experts only, the MoE layer's output after the all-reduce
    torch.set_num_threads(1)
    init_group(GroupSpec(ep, rank, port))
    try:
        model, _ = DeepseekV3ForCausalLM.from_pretrained(path, torch.bfloat16,
                                                         local_experts=expert_slice(TINY_EXPERTS, ep, rank))
        shard_moe_layers(model)
        with torch.no_grad():
            out = model.model.layers[TINY_MOE_LAYER].mlp(x)  # [T, D] bf16
        results.put((rank, out.float().numpy()))  # by value (exact): a shared tensor dies with this process
    finally:
        destroy_group()


@pytest.mark.parametrize("ep", [2, 4])
def test_bf16_ranks_over_a_group_give_the_whole_layers_output(tiny_kimi_path, ep):
    whole, _ = DeepseekV3ForCausalLM.from_pretrained(tiny_kimi_path, torch.bfloat16)
    layer = whole.model.layers[TINY_MOE_LAYER].mlp
    x = torch.randn(64, whole.config.hidden_size, generator=torch.Generator().manual_seed(8)).to(torch.bfloat16)
    with torch.no_grad():
        expected = layer(x)  # [T, D]
    spawn = multiprocessing.get_context("spawn")
    results, port = spawn.Queue(), free_port()
    ranks = [spawn.Process(target=_rank_of_a_group, args=(str(tiny_kimi_path), ep, r, port, x, results))
             for r in range(ep)]
    for process in ranks:
        process.start()
    try:
        outputs = {r: torch.from_numpy(out).to(torch.bfloat16) for r, out in (results.get(timeout=300) for _ in ranks)}
    finally:
        for process in ranks:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
    assert all(torch.equal(outputs[r], outputs[0]) for r in range(ep))  # one all-reduce: every rank the same
    differing = (outputs[0] != expected).float().mean().item()
    assert differing <= BF16_MAX_SHARE_DIFFERING, f"{differing:.1%} of outputs differ from the whole layer's"
    torch.testing.assert_close(outputs[0], expected, **BF16_STEP_TOL)
