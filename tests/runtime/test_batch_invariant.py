"""Fixed-tile linears: a row's output does not depend on the rows computed with it, and stays nn.Linear's within
BF16 rounding; the engine in that mode gives batch-independent greedy answers on the real model in BF16, and with
the native attention (FP32, BF16) the same logprobs after a preemption or a cache hit on blocks a decode wrote."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kernels.pack import pack_int4, quantize_int4
from kernels.paged_attention import native_paged_attention
from runtime.engine import EngineConfig, LLMEngine
from runtime.layers.batch_invariant import TILE_ROWS, FixedTileLinear, fixed_tile_linear, make_batch_invariant
from runtime.layers.int4_linear import Int4Linear
from runtime.layers.moe import MoEDims, TopKRouter
from runtime.models.qwen2 import Qwen2Config, Qwen2ForCausalLM
from runtime.sampling import SamplingParams
from tests.runtime.engine_logprobs import logprobs_of_each, logprobs_of_last
from tests.runtime.test_engine import LetterTokenizer
from tests.runtime.test_moe_fused import random_int4_moe

TINY = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512)


@pytest.mark.parametrize("tile", [8, TILE_ROWS])
def test_a_rows_output_is_the_same_in_any_batch_and_close_to_nn_linear(tile):
    torch.manual_seed(0)
    weight, bias = torch.randn(4864, 896).bfloat16(), torch.randn(4864).bfloat16()  # the 0.5B model's MLP shape
    x = torch.randn(300, 896).bfloat16()
    batch = fixed_tile_linear(x, weight, bias, tile)  # [300, 4864]
    for rows in ([0], [5], [299], [3, 7, 100], list(range(40))):
        assert torch.equal(fixed_tile_linear(x[rows], weight, bias, tile), batch[rows])
    # BF16 output rounding: within 2 ulps of the largest outputs
    torch.testing.assert_close(batch.float(), F.linear(x.float(), weight.float(), bias.float()), rtol=2e-2, atol=0.5)
    assert fixed_tile_linear(x.view(3, 100, 896), weight).shape == (3, 100, 4864)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_an_int4_linear_in_tiles_computes_a_row_the_same_in_any_batch(dtype):
    # 300 FP32 rows run the dequantize-then-F.linear path: on an AVX2 CPU a row computed alone differed by up to 5e-5
    # from the same row among 300; the native kernels compute rows alike, tiles or not
    torch.manual_seed(0)
    q, scale = quantize_int4(torch.randn(4864, 896), 32)
    layer = Int4Linear(896, 4864, group_size=32, scale_dtype=dtype)
    layer.weight_packed.copy_(pack_int4(q))
    layer.weight_scale.copy_(scale)
    x = torch.randn(300, 896, dtype=dtype)
    plain = layer(x)  # [300, 4864]
    model = nn.Sequential(layer, nn.Linear(4864, 4, dtype=dtype))
    assert make_batch_invariant(model, tile=16) == 2 and layer.tile == 16
    assert make_batch_invariant(model, tile=8) == 0 and layer.tile == 8
    batch = layer(x)
    for rows in ([0], [5], [299], [3, 7, 100], list(range(40))):
        assert torch.equal(layer(x[rows]), batch[rows])
    torch.testing.assert_close(batch, plain, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_mixture_of_experts_computes_a_token_the_same_in_any_batch(dtype):
    # plain, on an AVX2 CPU: router scores moved by up to 2e-7 with the batch (FP32 and BF16 models: the router
    # computes in FP32), enough to swap near-tied experts; FP32 outputs by up to 2e-6 (the fused INT4 experts)
    dims = MoEDims(hidden_size=1024, moe_intermediate_size=256, n_routed_experts=16, num_experts_per_tok=4, n_group=4,
                   topk_group=2, n_shared_experts=1, norm_topk_prob=True, routed_scaling_factor=2.827,
                   int4_group_size=32)
    gen = torch.Generator().manual_seed(0)
    moe = random_int4_moe(dtype, dims, gen)
    x = torch.randn(300, 1024, generator=gen).to(dtype)
    with torch.inference_mode():
        fused = moe(x)  # [300, 1024]
        assert make_batch_invariant(moe, tile=16) == 1 + 1 + 3 * 16 + 3  # itself, router, experts, shared (swapped)
        batch, (weights, ids) = moe(x), moe.gate(x)
        for rows in ([0], [5], [299], [3, 7, 100], list(range(40))):
            assert torch.equal(moe(x[rows]), batch[rows])
            row_weights, row_ids = moe.gate(x[rows])
            assert torch.equal(row_weights, weights[rows]) and torch.equal(row_ids, ids[rows])
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(batch, fused, **tol)


def test_a_router_scores_a_token_the_same_alone_or_in_any_batch():
    # 16 experts: torch's sigmoid took a row alone through its scalar tail and the same row in a batch through its
    # vector body, 1 ulp apart (seen as a tiny Kimi's logprob moving by 2.4e-7 beside other requests)
    dims = MoEDims(hidden_size=64, moe_intermediate_size=32, n_routed_experts=16, num_experts_per_tok=4, n_group=4,
                   topk_group=2, n_shared_experts=1, norm_topk_prob=True, routed_scaling_factor=2.827)
    gen = torch.Generator().manual_seed(1)
    router = TopKRouter(dims)
    router.weight.data = torch.randn(16, 64, generator=gen) * 0.3  # scores spread over (0, 1), not saturated
    router.tile = 16
    x = torch.randn(64, 64, generator=gen)
    weights, ids = router(x)
    for row in range(64):
        alone_weights, alone_ids = router(x[row : row + 1])
        assert torch.equal(alone_ids[0], ids[row]) and torch.equal(alone_weights[0], weights[row])


@pytest.mark.parametrize("tied", [False, True])
def test_make_batch_invariant_swaps_every_linear_and_keeps_the_logits(tied):
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**TINY, tie_word_embeddings=tied)).eval()
    ids, positions = torch.randint(1, 97, (20,)), torch.arange(20)
    with torch.inference_mode():
        before = model.compute_logits(model(ids, positions))
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules()) + tied
    assert make_batch_invariant(model) == linears == 2 * 7 + 1
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert isinstance(model.lm_head, FixedTileLinear)
    assert make_batch_invariant(model) == 0  # already done
    assert make_batch_invariant(model, tile=8) == 0 and {m.tile for m in model.modules()
                                                         if isinstance(m, FixedTileLinear)} == {8}
    with torch.inference_mode():
        torch.testing.assert_close(model.compute_logits(model(ids, positions)), before, rtol=1e-5, atol=1e-5)


def test_the_engine_in_batch_invariant_mode_decodes_as_the_plain_engine_does():
    # tiny random model in FP32: the per-sequence decode attention and fixed-tile linears give the same greedy tokens
    torch.manual_seed(0)
    prompts = [torch.randint(1, 97, (n,)).tolist() for n in (3, 17, 9, 30)]
    greedy = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)

    def run(**overrides) -> list[list[int]]:
        model = Qwen2ForCausalLM(Qwen2Config(**TINY)).eval()
        model.load_state_dict(reference.state_dict())
        config = EngineConfig(block_size=4, num_blocks=256, max_num_seqs=8, max_num_batched_tokens=64, **overrides)
        return [c.token_ids for c in LLMEngine(model, LetterTokenizer(), config).generate(prompts, greedy)]

    reference = Qwen2ForCausalLM(Qwen2Config(**TINY)).eval()
    assert run(batch_invariant=True) == run()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_in_batch_invariant_mode_a_preemption_changes_no_logprob(dtype):
    # native attention: a preempted sequence recomputes its prompt and the tokens it had decoded as a prefill; those
    # tokens' K/V, and every logprob after them, are what decoding gave, bit for bit
    if native_paged_attention() is None:
        pytest.skip("the native kernel needs a CPU with AVX2 + FMA and a C++ compiler")
    torch.manual_seed(0)
    prompts = [torch.randint(1, 97, (n,)).tolist() for n in (5, 23, 11, 30, 17, 9)]
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True, logprobs=0)
    reference = Qwen2ForCausalLM(Qwen2Config(**TINY)).eval()

    def run(num_blocks: int) -> tuple[LLMEngine, list[list[float]]]:
        model = Qwen2ForCausalLM(Qwen2Config(**TINY)).eval()
        model.load_state_dict(reference.state_dict())
        model.to(dtype)
        config = EngineConfig(block_size=4, num_blocks=num_blocks, max_num_seqs=8, max_num_batched_tokens=64,
                              batch_invariant=True)
        engine = LLMEngine(model, LetterTokenizer(), config)
        return engine, logprobs_of_each(engine, params, prompts)

    roomy, expected = run(num_blocks=256)
    tight, logprobs = run(num_blocks=24)
    assert roomy.scheduler.num_preemptions == 0 and tight.scheduler.num_preemptions > 0
    assert logprobs == expected and all(len(each) == 16 for each in logprobs)


@pytest.fixture(scope="module")
def invariant_model(embedded_model_dir):
    """The real model in BF16, its own copy: the engine in batch-invariant mode changes it in place."""
    from runtime.models.registry import load_model

    return load_model(embedded_model_dir, torch.bfloat16)


@pytest.mark.slow
def test_the_engine_in_bf16_gives_the_same_greedy_answers_batched_or_alone(invariant_model, embedded_tokenizer):
    # without the mode, 1 of these 8 answers changed on an AMX CPU (tests/runtime/test_engine_real.py runs FP32).
    # Tiles of 8 rows: BF16 in software (CPUs without AVX512-BF16 or AMX) costs per row computed, and every decode
    # step computes a tile
    model = invariant_model
    questions = ["What is the capital of France?", "How many legs does a spider have?",
                 "What colour is the sky on a clear day?", "Name a prime number larger than 10.",
                 "What language is spoken in Brazil?", "What is 7 times 6?", "Who wrote Romeo and Juliet?",
                 "What is the boiling point of water in Celsius?"]
    prompts = [embedded_tokenizer.encode_chat([{"role": "system", "content": "Answer in one short sentence."},
                                               {"role": "user", "content": q}]) for q in questions]
    greedy = SamplingParams(temperature=0.0, max_tokens=10)

    def make(**overrides) -> LLMEngine:
        return LLMEngine(model, embedded_tokenizer, EngineConfig(kv_cache_bytes=64 << 20, batch_invariant=True,
                                                                 invariant_tile=8, **overrides))

    batched = make().generate(prompts, greedy)  # with the prefix cache: 7 of 8 reuse the system prompt's blocks
    alone = [make(enable_prefix_cache=False).generate([p], greedy)[0] for p in prompts]
    assert [c.token_ids for c in batched] == [c.token_ids for c in alone]
    assert "paris" in batched[0].text.lower() and "42" in batched[5].text



@pytest.mark.slow
def test_a_long_prompt_computes_the_same_numbers_alone_or_beside_other_requests(invariant_model, embedded_tokenizer):
    # a long prompt is prefilled in chunks; beside other prompts, chunks cut where the step's budget ran out gave
    # other logprobs (first token: -1.37e-5 against -1.62e-5 alone, 700 tokens on an AMX CPU; -6.80e-3 against
    # -6.79e-3, these 300 tokens in software BF16); chunks at fixed positions of its own, the same
    question = "Summarise: " + " ".join(f"item {n} of the list is the number {n * 7}." for n in range(60))
    long = embedded_tokenizer.encode_chat([{"role": "user", "content": question}])[:300]
    others = [embedded_tokenizer.encode_chat([{"role": "user", "content": q}])
              for q in ("What is 2+2?", "Name a colour.", "What is the capital of Italy?")]
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True, logprobs=0)

    def logprobs(prompts: list[list[int]]) -> list[float]:
        config = EngineConfig(kv_cache_bytes=64 << 20, max_num_batched_tokens=128, max_num_seqs=8,
                              enable_prefix_cache=False, batch_invariant=True)  # chunks of 112 tokens
        return logprobs_of_last(LLMEngine(invariant_model, embedded_tokenizer, config), params, prompts)

    assert len(long) == 300
    alone = logprobs([long])
    assert logprobs([*others, long]) == alone and len(alone) == 4  # bit for bit


@pytest.mark.slow
def test_a_prompt_computes_the_same_numbers_with_or_without_a_prefix_cache_hit(embedded_model_dir, embedded_tokenizer):
    # a hit of 176 tokens used to start the computation mid-chunk (chunks of 112 tokens): first logprob -0.4925325
    # against -0.4925337 without the hit (FP32 here; BF16 -0.501 against -0.485). Now the hit is used up to 112.
    from runtime.models.registry import load_model

    model = load_model(embedded_model_dir, torch.float32)  # its own copy: the mode changes it in place
    first = embedded_tokenizer.encode("You are a careful research assistant. Read the pages and answer. " * 30)[:300]
    second = first[:180] + embedded_tokenizer.encode(" Now answer: what is seven times six? Explain.")
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True, logprobs=0)

    def engine() -> LLMEngine:
        config = EngineConfig(kv_cache_bytes=64 << 20, max_num_batched_tokens=128, max_num_seqs=8, batch_invariant=True)
        return LLMEngine(model, embedded_tokenizer, config)  # chunks of 112 tokens

    alone = logprobs_of_last(engine(), params, [second])
    after_first = engine()
    assert len(alone) == 4 and logprobs_of_last(after_first, params, [first], [second]) == alone
    assert after_first.stats.prompt_tokens_reused == 112


@pytest.mark.slow
def test_a_prompt_reusing_blocks_a_decode_wrote_computes_as_if_all_prefilled(embedded_model_dir, embedded_tokenizer):
    # FP32: the first request decodes 40 tokens; the second's prompt repeats them and reuses their cached blocks. With
    # the native attention, decode and prefill compute a token alike, so the hit changes nothing (before: a 224-token
    # hit, 124 of them decoded, gave -1.5074741 against -1.5074750 all prefilled).
    from runtime.models.registry import load_model

    if native_paged_attention() is None:
        pytest.skip("the native kernel needs a CPU with AVX2 + FMA and a C++ compiler")
    model = load_model(embedded_model_dir, torch.float32)  # its own copy: the mode changes it in place
    prompt = embedded_tokenizer.encode("The reading room opens at nine. Visitors sign the register. " * 8)[:90]
    writer = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True, logprobs=0)

    def engine() -> LLMEngine:
        config = EngineConfig(kv_cache_bytes=64 << 20, max_num_batched_tokens=128, max_num_seqs=8, batch_invariant=True,
                              invariant_tile=8)  # chunks of 112 tokens; small tiles decode faster here
        return LLMEngine(model, embedded_tokenizer, config)

    after_decode = engine()
    decoded = after_decode.generate([prompt], writer)[0].token_ids
    second = prompt + decoded + embedded_tokenizer.encode(" In one word, when does it open?")
    reused_before = after_decode.stats.prompt_tokens_reused
    hit = logprobs_of_last(after_decode, params, [second])
    assert after_decode.stats.prompt_tokens_reused - reused_before == 112  # 22 of them decoded by the first request
    assert len(hit) == 4 and hit == logprobs_of_last(engine(), params, [second])  # bit for bit
