"""MLA and YaRN RoPE: tables against transformers, naive vs absorbed attention, decoding from the latent cache."""

import pytest
import torch
from transformers import DeepseekV3Config as HFConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.deepseek_v3.modeling_deepseek_v3 import (
    DeepseekV3RotaryEmbedding,
    apply_rotary_pos_emb_interleave,
    yarn_apply_mscale,
)

from kernels.paged_attention import native_paged_attention
from runtime.layers import attention
from runtime.layers.attention import AttentionContext, PrefillSpan, attention_context
from runtime.layers.mla import LatentAttention, MLADims, MultiHeadLatentAttention, latent_attention
from runtime.layers.rotary_yarn import YarnRotaryEmbedding, YarnScaling
from tests.runtime.attention_contexts import invariant_decode, invariant_prefill

ROPE_DIM = 64
# (theta, YaRN fields): Kimi K2 Thinking, DeepSeek-V3, DeepSeek-V2 (mscale < 1), and mscale != mscale_all_dim.
YARN_CASES = {
    "kimi_k2": (50000.0, dict(factor=64.0, original_max_position_embeddings=4096, beta_fast=1.0, beta_slow=1.0,
                              mscale=1.0, mscale_all_dim=1.0)),
    "deepseek_v3": (10000.0, dict(factor=40.0, original_max_position_embeddings=4096, beta_fast=32.0, beta_slow=1.0,
                                  mscale=1.0, mscale_all_dim=1.0)),
    "deepseek_v2": (10000.0, dict(factor=40.0, original_max_position_embeddings=4096, beta_fast=32.0, beta_slow=1.0,
                                  mscale=0.707, mscale_all_dim=0.707)),
    "mixed_mscale": (10000.0, dict(factor=8.0, original_max_position_embeddings=2048, beta_fast=16.0, beta_slow=2.0,
                                   mscale=1.0, mscale_all_dim=0.5)),
}
SMALL = MLADims(hidden_size=64, num_heads=4, q_lora_rank=48, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
                v_head_dim=16)
MLA_DIMS = {"q_lora": SMALL, "q_proj": MLADims(**{**SMALL.__dict__, "q_lora_rank": None})}
# Same maths in another order: fp32 agrees to rounding; bf16 rounds q·W_UK / the expanded keys at different points
# (outputs here are O(0.5), measured bf16 differences ~2e-3).
NAIVE_VS_ABSORBED_TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=5e-3, rtol=2e-2)}


def _hf_config(theta: float, yarn: dict) -> HFConfig:
    return HFConfig(qk_rope_head_dim=ROPE_DIM, num_mtp_layers=0,
                    rope_parameters={"rope_type": "yarn", "rope_theta": theta, **yarn})


@pytest.mark.parametrize("case", list(YARN_CASES))
def test_yarn_tables_match_transformers(case):
    theta, yarn = YARN_CASES[case]
    rotary = YarnRotaryEmbedding(ROPE_DIM, theta, YarnScaling(**yarn))
    hf_inv_freq, hf_attention_factor = ROPE_INIT_FUNCTIONS["yarn"](_hf_config(theta, yarn))
    positions = torch.tensor([0, 1, 17, 4095, 4096, 100_000, 262_143])
    cos, sin = rotary(positions)
    angles = positions.float()[:, None] * hf_inv_freq[None, :]
    expected = torch.cat((angles, angles), dim=-1)
    torch.testing.assert_close(cos, expected.cos() * hf_attention_factor, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(sin, expected.sin() * hf_attention_factor, atol=1e-6, rtol=1e-6)
    hf_scale = yarn_apply_mscale({"rope_type": "yarn", **yarn}, 1.0)
    assert rotary.attention_factor == pytest.approx(hf_attention_factor, rel=1e-12)
    assert YarnScaling(**yarn).softmax_scale_factor == pytest.approx(hf_scale, rel=1e-12)


def test_without_rope_scaling_the_tables_are_plain_rope():
    hf_config = HFConfig(qk_rope_head_dim=ROPE_DIM, num_mtp_layers=0, rope_parameters={"rope_type": "default",
                                                                                        "rope_theta": 10000.0})
    hf_inv_freq, _ = DeepseekV3RotaryEmbedding.compute_default_rope_parameters(hf_config)
    rotary = YarnRotaryEmbedding(ROPE_DIM, 10000.0, scaling=None)
    cos, _ = rotary(torch.tensor([0, 5, 4096]))
    angles = torch.tensor([0.0, 5.0, 4096.0])[:, None] * hf_inv_freq[None, :]
    torch.testing.assert_close(cos, torch.cat((angles, angles), dim=-1).cos(), atol=1e-6, rtol=1e-6)
    assert rotary.attention_factor == 1.0


def test_interleaved_rotation_matches_transformers():
    theta, yarn = YARN_CASES["kimi_k2"]
    rotary = YarnRotaryEmbedding(ROPE_DIM, theta, YarnScaling(**yarn))
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(9, 4, ROPE_DIM, generator=gen), torch.randn(9, 1, ROPE_DIM, generator=gen)  # [T, H, R]
    cos, sin = rotary(torch.arange(9))
    expected_q, expected_k = apply_rotary_pos_emb_interleave(q, k, cos, sin, unsqueeze_dim=1)
    torch.testing.assert_close(rotary.rotate(q, cos, sin), expected_q, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(rotary.rotate(k, cos, sin), expected_k, atol=1e-6, rtol=1e-6)


def _random_mla(dims: MLADims, dtype: torch.dtype, absorbed: bool) -> MultiHeadLatentAttention:
    # The same seed gives both forms the same weights.
    theta, yarn = YARN_CASES["kimi_k2"]
    rotary = YarnRotaryEmbedding(dims.qk_rope_head_dim, theta, YarnScaling(**yarn))
    mla = MultiHeadLatentAttention(dims, rotary, softmax_scale=dims.qk_head_dim**-0.5, absorbed=absorbed)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in mla.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) / param.shape[-1] ** 0.5)
    return mla.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("variant", list(MLA_DIMS))
def test_naive_and_absorbed_agree(variant, dtype):
    naive_mla, absorbed_mla = (_random_mla(MLA_DIMS[variant], dtype, absorbed) for absorbed in (False, True))
    hidden = torch.randn(23, SMALL.hidden_size, generator=torch.Generator().manual_seed(4)).to(dtype)  # [T, D]
    cos, sin = naive_mla.rotary(torch.arange(23))
    with torch.no_grad():
        naive = naive_mla(hidden, cos, sin)
        absorbed = absorbed_mla(hidden, cos, sin)
    torch.testing.assert_close(absorbed, naive, **NAIVE_VS_ABSORBED_TOL[dtype])


def test_decoding_from_the_latent_cache_matches_the_full_sequence():
    # Cache rows [S, L] are all a decode step reads; each step's query row must equal that row of the prefill.
    heads, latent_dim, value_dim, seq = 4, 40, 32, 11
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(seq, heads, latent_dim, generator=gen)  # [S, H, L]
    cache = torch.randn(seq, latent_dim, generator=gen)  # [S, L]
    prefill = latent_attention(q, cache, value_dim, scale=0.2)  # [S, H, C]
    for t in range(seq):
        step = latent_attention(q[t:t + 1], cache[:t + 1], value_dim, scale=0.2)  # [1, H, C]
        torch.testing.assert_close(step[0], prefill[t], atol=1e-6, rtol=1e-6)
    # A chunk of 4 new tokens after a cached prefix of 7 (chunked prefill) sees the same thing.
    torch.testing.assert_close(latent_attention(q[7:], cache, value_dim, scale=0.2), prefill[7:], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("form", ["native", "torch"])
def test_paged_latent_cache_with_an_engine_context_matches_one_sequence_at_a_time(form, monkeypatch):
    # A step as the engine lays it out: two decoding sequences (contexts of 8 and 3 tokens, padded), a prefill chunk
    # of 4 after a cached prefix of 5, and a fresh prefill of 6; cache slots scattered over a 64-slot cache. Decoding
    # reads the cache through the native kernel (where it builds) or gathers it into a padded batch.
    if form == "native" and native_paged_attention() is None:
        pytest.skip("the native kernel needs a CPU with AVX2 + FMA and a C++ compiler")
    monkeypatch.setattr(attention, "NATIVE_DECODE", form == "native")
    heads, latent_dim, value_dim, scale = 4, 40, 32, 0.2
    lengths, new_tokens = (8, 3, 9, 6), (1, 1, 4, 6)
    gen = torch.Generator().manual_seed(6)
    slots = torch.randperm(64, generator=gen)[: sum(lengths)].split(lengths)  # each sequence's slots, in order
    q = [torch.randn(n, heads, latent_dim, generator=gen) for n in lengths]  # [N, H, L] per sequence
    latents = [torch.randn(n, latent_dim, generator=gen) for n in lengths]  # [N, L]
    per_sequence = zip(q, latents, new_tokens, strict=True)
    expected = [latent_attention(qs, ls, value_dim, scale)[-k:] for qs, ls, k in per_sequence]  # [k, H, C] each

    attn = LatentAttention(heads, latent_dim, value_dim, scale)
    attn.latent_cache = torch.zeros(64, latent_dim)  # [S, L]
    for s, ls, k in zip(slots, latents, new_tokens, strict=True):  # earlier steps wrote the cached prefixes
        attn.latent_cache[s[:-k]] = ls[:-k]
    step_q = torch.cat([qs[-k:] for qs, k in zip(q, new_tokens, strict=True)])  # [T, H, L]
    step_latent = torch.cat([ls[-k:] for ls, k in zip(latents, new_tokens, strict=True)])  # [T, L]
    decode_slots = torch.zeros(2, 8, dtype=torch.int64)
    decode_slots[0], decode_slots[1, :3] = slots[0], slots[1]
    context = AttentionContext(
        slot_mapping=torch.cat([s[-k:] for s, k in zip(slots, new_tokens, strict=True)]),
        num_decode=2,
        decode_slots=decode_slots,
        prefills=(PrefillSpan(2, 6, slots[2]), PrefillSpan(6, 12, slots[3])), decode_lengths=torch.tensor([8, 3]),
    )
    with attention_context(context):
        out = attn(step_q, step_latent)
    torch.testing.assert_close(out, torch.cat(expected), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn.latent_cache[torch.cat(slots)], torch.cat(latents), atol=0, rtol=0)


@pytest.mark.parametrize("prefix", [0, 70])  # a fresh prompt's first chunk; a chunk after a cached prefix
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_in_batch_invariant_mode_a_prefilled_latent_token_computes_as_if_decoded(dtype, prefix):
    # native kernel: a chunk's queries attend as decodes at their positions do, bit for bit (the default prefill,
    # einsums over the chunk, sums in another order), so latents written while decoding equal their recompute
    if native_paged_attention() is None:
        pytest.skip("the native kernel needs a CPU with AVX2 + FMA and a C++ compiler")
    heads, latent_dim, value_dim, chunk, slots_total = 4, 40, 32, 24, 128
    gen = torch.Generator().manual_seed(3)
    attn = LatentAttention(heads, latent_dim, value_dim, scale=0.2)
    attn.latent_cache = torch.randn(slots_total, latent_dim, generator=gen).to(dtype)  # [S, L]
    context_slots = torch.randperm(slots_total, generator=gen)[: prefix + chunk]  # [C]
    q = torch.randn(chunk, heads, latent_dim, generator=gen).to(dtype)  # [N, H, L]
    latent = torch.randn(chunk, latent_dim, generator=gen).to(dtype)  # [N, L]
    with attention_context(invariant_prefill(context_slots, prefix)):
        out = attn(q, latent)  # [N, H, C]
    for i in range(chunk):
        length = prefix + i + 1
        with attention_context(invariant_decode(context_slots, length)):
            assert torch.equal(attn(q[i : i + 1], latent[i : i + 1])[0], out[i])
        rows = attn.latent_cache[context_slots[:length]].float()
        expected = latent_attention(q[i : i + 1].float(), rows, value_dim, scale=0.2)[0]
        tolerance = 1e-5 if dtype == torch.float32 else 2**-7
        torch.testing.assert_close(out[i].float(), expected, atol=tolerance, rtol=tolerance)


def test_kimi_k2_absorbed_form_attends_over_576_values_per_token():
    # Real Kimi K2 sizes, built and run on the meta device (shapes only, no memory).
    kimi = MLADims(hidden_size=7168, num_heads=64, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
                   qk_rope_head_dim=64, v_head_dim=128)
    theta, yarn = YARN_CASES["kimi_k2"]
    seen = {}
    with torch.device("meta"):
        mla = MultiHeadLatentAttention(kimi, YarnRotaryEmbedding(64, theta, YarnScaling(**yarn)), softmax_scale=0.1)
        mla.latent_attn.register_forward_hook(lambda mod, args, out: seen.update(q=args[0].shape, latent=args[1].shape))
        cos, sin = mla.rotary(torch.arange(5))
        out = mla(torch.empty(5, 7168), cos, sin)
    assert seen == {"q": (5, 64, 576), "latent": (5, 576)}
    assert out.shape == (5, 7168)
