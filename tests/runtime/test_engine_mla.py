"""The engine over a tiny Kimi K2 checkpoint: MLA's paged latent cache (one row of C + R values per token)."""

import pytest
import torch

from kernels.paged_attention import native_paged_attention
from runtime.engine import EngineConfig, LLMEngine
from runtime.engine.factory import load_tokenizer
from runtime.layers.mla import LatentAttention
from runtime.models.deepseek_v3 import DeepseekV3ForCausalLM
from runtime.models.registry import load_model
from runtime.sampling import SamplingParams
from tests.runtime.engine_logprobs import logprobs_of_each, logprobs_of_last

GREEDY = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
WITH_LOGPROBS = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, logprobs=0)


@pytest.fixture(scope="module")
def kimi(tiny_kimi_path):
    return load_model(tiny_kimi_path, torch.float32), load_tokenizer(tiny_kimi_path)


def make(kimi, **overrides) -> LLMEngine:
    model, tokenizer = kimi
    return LLMEngine(model, tokenizer, EngineConfig(block_size=4, num_blocks=128, max_num_batched_tokens=32,
                                                    **overrides))


def test_latent_cache_has_one_row_of_c_plus_r_values_per_token(kimi):
    engine = make(kimi)
    latent_layers = [m for m in kimi[0].modules() if isinstance(m, LatentAttention)]
    assert latent_layers and len(engine.runner.kv_cache.tensors) == len(latent_layers)
    for layer, tensors in zip(latent_layers, engine.runner.kv_cache.tensors, strict=True):
        (cache,) = tensors
        assert cache.shape == (128 * 4, layer.latent_dim)


def test_batched_chunked_and_prefix_cached_generation_equals_one_at_a_time(kimi):
    _, tokenizer = kimi
    shared = tokenizer.encode("You are a helpful research assistant. Think step by step. " * 2)
    prompts = [shared + tokenizer.encode(f"Question {i}: what is {i} plus {i}?") for i in range(3)]
    alone = [make(kimi, enable_prefix_cache=False).generate([p], GREEDY)[0].token_ids for p in prompts]
    engine = make(kimi)
    batched = engine.generate(prompts, GREEDY)
    assert [c.token_ids for c in batched] == alone
    assert engine.stats.prompt_tokens_reused >= 2 * (len(shared) // 4 * 4 - 4)


def test_speculative_drafts_over_the_latent_cache_change_no_greedy_output(kimi):
    """Drafts checked as decode rows of MLA's latent cache give the tokens decoding one by one gives."""
    _, tokenizer = kimi
    prompts = [tokenizer.encode("one two three four one two three four one two " * (i + 1)) for i in range(3)]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    plain = [c.token_ids for c in make(kimi).generate(prompts, params)]
    engine = make(kimi, speculative_tokens=3)
    assert [c.token_ids for c in engine.generate(prompts, params)] == plain
    assert engine.speculation.drafted > 0


def test_the_naive_form_pages_keys_and_values_and_decodes_as_the_absorbed_form(kimi, tiny_kimi_path):
    # The naive form caches per-head keys (N + R = 24 wide) and values (V = 16): values are zero-padded to the key
    # width in the cache and cut back after attention. Prompts past the tiny original context (32) decode in YaRN's
    # interpolated region, batched, chunked and prefix-cached.
    naive, _ = DeepseekV3ForCausalLM.from_pretrained(tiny_kimi_path, torch.float32, absorbed_mla=False)
    tokenizer = kimi[1]
    prompts = [tokenizer.encode(f"Question {i}: " + "what is the sum of these numbers? " * (2 + i)) for i in range(3)]
    assert min(map(len, prompts)) > 32
    absorbed = [c.token_ids for c in make(kimi).generate(prompts, WITH_LOGPROBS)]
    assert [c.token_ids for c in make((naive, tokenizer)).generate(prompts, WITH_LOGPROBS)] == absorbed


def invariant_engine(model, tokenizer, prefix_cache: bool) -> LLMEngine:
    return LLMEngine(model, tokenizer, EngineConfig(block_size=4, num_blocks=256, max_num_batched_tokens=64,
                                                    max_num_seqs=8, enable_prefix_cache=prefix_cache,
                                                    batch_invariant=True))  # chunks of 56 tokens


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batch_invariant_mode_computes_a_request_the_same_alone_or_beside_others(tiny_kimi_path, dtype):
    # MLA, the router and the INT4 experts of the Kimi layout: logprobs bit for bit, whatever runs beside it. In FP32
    # the router's scores, the experts' fused products and the absorbed MLA's per-head products each broke it.
    model, tokenizer = load_model(tiny_kimi_path, dtype), load_tokenizer(tiny_kimi_path)
    prompts = [tokenizer.encode(f"Question {i}: " + "what is the sum of these numbers? " * (1 + 3 * i))
               for i in range(4)]
    for i in (0, 3):
        alone = logprobs_of_last(invariant_engine(model, tokenizer, False), WITH_LOGPROBS, [prompts[i]])
        others = prompts[:i] + prompts[i + 1:]
        assert len(alone) == 12
        beside = logprobs_of_last(invariant_engine(model, tokenizer, False), WITH_LOGPROBS, [*others, prompts[i]])
        assert beside == alone


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batch_invariant_mode_computes_a_request_the_same_with_or_without_a_prefix_cache_hit(tiny_kimi_path, dtype):
    # the hit (68 cached tokens) is used up to the end of the first 56-token chunk, where the prompt's computation
    # without it starts its second chunk (the real model's case: tests/runtime/test_batch_invariant.py)
    model, tokenizer = load_model(tiny_kimi_path, dtype), load_tokenizer(tiny_kimi_path)
    first = tokenizer.encode("You are a careful assistant. " * 12)
    second = first[:70] + tokenizer.encode(" Now answer: what is seven times six?")
    assert len(first) > 70
    alone = logprobs_of_last(invariant_engine(model, tokenizer, True), WITH_LOGPROBS, [second])
    engine = invariant_engine(model, tokenizer, True)
    assert logprobs_of_last(engine, WITH_LOGPROBS, [first], [second]) == alone
    assert engine.stats.prompt_tokens_reused == 56


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batch_invariant_mode_a_preemption_changes_no_logprob(tiny_kimi_path, dtype):
    # native latent attention: a preempted sequence recomputes the tokens it had decoded as a prefill, and its
    # latents, and every logprob after them, are what decoding gave, bit for bit
    if native_paged_attention() is None:
        pytest.skip("the native kernel needs a CPU with AVX2 + FMA and a C++ compiler")
    model, tokenizer = load_model(tiny_kimi_path, dtype), load_tokenizer(tiny_kimi_path)
    prompts = [tokenizer.encode(f"Question {i}: " + "add them up. " * (1 + i)) for i in range(6)]  # 17-62 tokens
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True, logprobs=0)

    def run(num_blocks: int) -> tuple[LLMEngine, list[list[float]]]:
        config = EngineConfig(block_size=4, num_blocks=num_blocks, max_num_seqs=8, max_num_batched_tokens=64,
                              enable_prefix_cache=False, batch_invariant=True)
        engine = LLMEngine(model, tokenizer, config)
        return engine, logprobs_of_each(engine, params, prompts)

    roomy, expected = run(num_blocks=512)
    tight, logprobs = run(num_blocks=24)
    assert roomy.scheduler.num_preemptions == 0 and tight.scheduler.num_preemptions > 0
    assert logprobs == expected and all(len(each) == 16 for each in logprobs)
