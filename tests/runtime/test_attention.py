"""Paged decode attention (runtime/layers/attention.py): each decoding sequence attends over exactly its own cached
context, in every form: the native kernel, and torch's, padded to the batch's longest or one by one (the
batch-invariant mode), in FP32 and BF16; in batch-invariant mode a prefilled token computes as if decoded."""

import pytest
import torch
import torch.nn.functional as F

from kernels.paged_attention import native_paged_attention
from runtime.layers import attention
from runtime.layers.attention import Attention, AttentionContext, attention_context
from tests.runtime.attention_contexts import invariant_decode, invariant_prefill

HEADS, KV_HEADS, HEAD_DIM, SLOTS = 6, 2, 16, 64
LENGTHS = (5, 9, 2)  # context of each decoding sequence, its new token included


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # q [H, D], k/v [C, Hkv, D] -> [H, D]: the new token sees the whole context
    out = F.scaled_dot_product_attention(q[:, None].float(), k.transpose(0, 1).float(), v.transpose(0, 1).float(),
                                         scale=HEAD_DIM**-0.5, enable_gqa=True)
    return out[:, 0]


@pytest.mark.parametrize("form", ["native", "padded", "one_by_one"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decoding_sequences_attend_over_their_own_context(monkeypatch, dtype, form):
    if form == "native" and native_paged_attention() is None:
        pytest.skip("the native kernel needs a CPU with AVX2 + FMA and a C++ compiler")
    monkeypatch.setattr(attention, "NATIVE_DECODE", form == "native")
    gen = torch.Generator().manual_seed(0)
    attn = Attention(HEADS, KV_HEADS, HEAD_DIM, scale=HEAD_DIM**-0.5)
    attn.k_cache = torch.randn(SLOTS, KV_HEADS, HEAD_DIM, generator=gen).to(dtype)  # [S, Hkv, D]
    attn.v_cache = torch.randn(SLOTS, KV_HEADS, HEAD_DIM, generator=gen).to(dtype)
    slots = torch.randperm(SLOTS, generator=gen)[: sum(LENGTHS)].split(LENGTHS)  # scattered, in context order
    decode_slots = torch.zeros(len(LENGTHS), max(LENGTHS), dtype=torch.int64)  # [B, L], padded with slot 0
    for row, s in enumerate(slots):
        decode_slots[row, : len(s)] = s
    q = torch.randn(len(LENGTHS), HEADS, HEAD_DIM, generator=gen).to(dtype)  # [B, H, D]
    k, v = (torch.randn(len(LENGTHS), KV_HEADS, HEAD_DIM, generator=gen).to(dtype) for _ in range(2))  # new tokens
    context = AttentionContext(
        slot_mapping=torch.stack([s[-1] for s in slots]), num_decode=len(LENGTHS), decode_slots=decode_slots,
        prefills=(), decode_lengths=torch.tensor(LENGTHS), batch_invariant=form == "one_by_one",
    )
    with attention_context(context):
        out = attn(q, k, v)  # [B, H, D]
    expected = torch.stack([reference(q[i], attn.k_cache[s], attn.v_cache[s]) for i, s in enumerate(slots)])
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), expected, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("prefix", [0, 70])  # a fresh prompt's first chunk; a chunk after a cached prefix
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_in_batch_invariant_mode_a_prefilled_token_computes_as_if_decoded(dtype, prefix):
    # native kernel: a chunk's queries attend as decodes at their positions do, bit for bit, so blocks written while
    # decoding equal their recompute. SDPA over the chunk, the default form, sums in another order.
    if native_paged_attention() is None:
        pytest.skip("the native kernel needs a CPU with AVX2 + FMA and a C++ compiler")
    gen = torch.Generator().manual_seed(1)
    chunk, slots_total = 40, 256
    attn = Attention(HEADS, KV_HEADS, HEAD_DIM, scale=HEAD_DIM**-0.5)
    attn.k_cache = torch.randn(slots_total, KV_HEADS, HEAD_DIM, generator=gen).to(dtype)  # [S, Hkv, D]
    attn.v_cache = torch.randn(slots_total, KV_HEADS, HEAD_DIM, generator=gen).to(dtype)
    context_slots = torch.randperm(slots_total, generator=gen)[: prefix + chunk]  # [C]
    q = torch.randn(chunk, HEADS, HEAD_DIM, generator=gen).to(dtype)  # [N, H, D]
    k, v = (torch.randn(chunk, KV_HEADS, HEAD_DIM, generator=gen).to(dtype) for _ in range(2))
    with attention_context(invariant_prefill(context_slots, prefix)):
        out = attn(q, k, v)  # [N, H, D]
    for i in range(chunk):
        length = prefix + i + 1
        with attention_context(invariant_decode(context_slots, length)):
            assert torch.equal(attn(q[i : i + 1], k[i : i + 1], v[i : i + 1])[0], out[i])
        expected = reference(q[i], attn.k_cache[context_slots[:length]], attn.v_cache[context_slots[:length]])
        tolerance = 1e-5 if dtype == torch.float32 else 2**-7
        torch.testing.assert_close(out[i].float(), expected, atol=tolerance, rtol=tolerance)
