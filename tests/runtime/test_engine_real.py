"""The engine on the real embedded model (FP32, slow): batching and the prefix cache never change greedy answers.

FP32, because BF16 matmuls are not batch-invariant on every CPU: on one with AMX (Sapphire Rapids), 1 of these 8
greedy answers changed between a batch of 8 and one at a time in BF16 ("23" against "23 is a prime number larger
than 1"), and none in FP32. On CPUs without AVX512-BF16 the BF16 answers had matched too. Serving runs BF16, so
there, as on GPUs, a greedy answer may depend on what it was batched with, unless the engine runs batch-invariant
(tests/runtime/test_batch_invariant.py checks these answers in BF16 in that mode)."""

import pytest

from runtime.engine import EngineConfig, LLMEngine
from runtime.sampling import SamplingParams

pytestmark = pytest.mark.slow

SYSTEM = "You are a concise assistant. Answer in one short sentence."
QUESTIONS = [
    "What is the capital of France?", "How many legs does a spider have?", "What colour is the sky on a clear day?",
    "Name a prime number larger than 10.", "What language is spoken in Brazil?", "What is 7 times 6?",
    "Who wrote Romeo and Juliet?", "What is the boiling point of water in Celsius?",
]
GREEDY = SamplingParams(temperature=0.0, max_tokens=10)


@pytest.fixture(scope="module")
def prompts(embedded_tokenizer):
    return [embedded_tokenizer.encode_chat([{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}])
            for q in QUESTIONS]


def make(model, tokenizer, **overrides) -> LLMEngine:
    return LLMEngine(model, tokenizer, EngineConfig(kv_cache_bytes=64 << 20, **overrides))


def test_batch_of_8_equals_one_at_a_time_and_shares_the_system_prompt(embedded_model_fp32, embedded_tokenizer, prompts):
    batched_engine = make(embedded_model_fp32, embedded_tokenizer)
    batched = batched_engine.generate(prompts, GREEDY)
    alone = [make(embedded_model_fp32, embedded_tokenizer, enable_prefix_cache=False).generate([p], GREEDY)[0]
             for p in prompts]
    assert [c.token_ids for c in batched] == [c.token_ids for c in alone]
    assert "paris" in batched[0].text.lower() and "42" in batched[5].text
    shared_blocks = 16 * (min(len(p) for p in prompts) // 16 - 1)  # the common system-prompt part, in whole blocks
    assert all(c.num_cached_tokens >= shared_blocks for c in batched[1:])
    assert batched_engine.stats.prompt_tokens_reused >= 7 * shared_blocks


COPIED = [  # an agent's outputs copy from its context: a tool call like an earlier one, a phrase of a page
    ("Earlier you called: {\"name\": \"search\", \"arguments\": {\"query\": \"Scott Derrickson nationality\"}}\n"
     "Write the same call for the query \"Ed Wood nationality\", as JSON only."),
    "Copy this sentence exactly: The Esma Sultan Mansion is a historical yali located at Bosphorus in Ortakoy.",
    "Repeat the list: alpha, beta, gamma, delta, epsilon, zeta, eta, theta.",
]


def test_speculative_drafts_change_no_greedy_answer(embedded_model_fp32, embedded_tokenizer):
    """Prompt-lookup drafts (runtime/engine/speculative.py) are taken on copied text, and every answer is the one
    decoding token by token gives, alone or in a batch (FP32: a row of a checked span and a decode row round alike)."""
    prompts = [embedded_tokenizer.encode_chat([{"role": "user", "content": q}]) for q in COPIED]
    params = SamplingParams(temperature=0.0, max_tokens=40)
    plain = make(embedded_model_fp32, embedded_tokenizer).generate(prompts, params)
    speculating = make(embedded_model_fp32, embedded_tokenizer, speculative_tokens=3)
    batched = speculating.generate(prompts, params)
    alone = [make(embedded_model_fp32, embedded_tokenizer, speculative_tokens=3).generate([p], params)[0]
             for p in prompts]
    assert [c.token_ids for c in batched] == [c.token_ids for c in plain] == [c.token_ids for c in alone]
    assert "Ortakoy" in batched[1].text
    # 33 of the 69 tokens came as drafts when written (the list and the sentence almost all)
    assert speculating.speculation.accepted >= sum(len(c.token_ids) for c in batched) // 3
