"""Log-probabilities of a prompt's tokens (`SamplingParams.prompt_logprobs`, what `/v1/completions` with `echo`
returns and lm-eval's log-likelihood tasks read): the real embedded model in FP32 against transformers' forward over
the same folder, with the prompt's prefill chunked over several steps, beside other requests, and after its prefix
was cached (a cached position computes no logits, so such a request reuses nothing)."""

import pytest
import torch
import transformers

from runtime.engine import EngineConfig, LLMEngine
from runtime.sampling import SamplingParams

pytestmark = pytest.mark.slow

# both sides run FP32 with different kernels and op orders: seen 1.9e-6 apart at most here (an AVX-512 EPYC)
LOGPROB_ATOL = 1e-3
PROMPT = ("def is_palindrome(text):\n    \"\"\"Whether text reads the same backwards.\"\"\"\n"
          "    cleaned = [c.lower() for c in text if c.isalnum()]\n    return cleaned == cleaned[::-1]\n")
ASKED = SamplingParams(temperature=0.0, max_tokens=2, prompt_logprobs=2)


@pytest.fixture(scope="module")
def reference(embedded_model_dir, embedded_tokenizer):
    """transformers' log-probability of each prompt token after the first, and its top 2 ids: ([P - 1], [P - 1, 2])."""
    ids = torch.tensor(embedded_tokenizer.encode(PROMPT))
    model = transformers.Qwen2ForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logp = torch.log_softmax(model(ids[None]).logits[0, :-1].float(), dim=-1)  # [P - 1, V]
    return ids.tolist(), logp.gather(1, ids[1:, None])[:, 0], logp.topk(2, dim=-1).indices


def run(engine: LLMEngine, prompts: list[list[int]], params: list[SamplingParams]) -> dict[str, list]:
    """Each request's prompt log-probabilities (as its first output carried them) and its cached prompt tokens."""
    ids = [engine.add_request(p, sp) for p, sp in zip(prompts, params, strict=True)]
    seen: dict[str, list] = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.request_id not in seen:
                seen[out.request_id] = [out.prompt_logprobs, out.num_cached_tokens]
    return {i: seen[i] for i in ids}


def test_prompt_logprobs_match_transformers_chunked_batched_and_after_a_cache_hit(embedded_model_fp32,
                                                                                 embedded_tokenizer, reference):
    ids, expected, expected_top = reference
    # chunks of 16 tokens: the prompt's ~50 tokens are prefilled over several steps, beside a second request
    engine = LLMEngine(embedded_model_fp32, embedded_tokenizer,
                       EngineConfig(kv_cache_bytes=64 << 20, max_num_batched_tokens=16, block_size=16))
    other = embedded_tokenizer.encode("print('hello')\n")
    plain = SamplingParams(temperature=0.0, max_tokens=2)
    for round_ in ("cold", "after the same prompt was cached"):
        if round_ != "cold":
            cached = run(engine, [ids], [plain])
            assert next(iter(cached.values()))[1] > 0  # the prefix is in the cache now
        (logprobs, cached_tokens), (other_logprobs, _) = run(engine, [ids, other], [ASKED, plain]).values()
        assert other_logprobs is None  # not asked
        assert cached_tokens == 0, round_  # a reused position would have no logits
        assert len(logprobs) == len(ids) and logprobs[0] is None  # nothing predicts the first token
        got = torch.tensor([lp.logprob for lp in logprobs[1:]])
        assert torch.allclose(got, expected, atol=LOGPROB_ATOL), (round_, (got - expected).abs().max())
        top = torch.tensor([[token for token, _ in lp.top] for lp in logprobs[1:]])  # [P - 1, 2]
        assert (top[:, 0] == expected_top[:, 0]).float().mean() > 0.97, round_  # near-ties may swap
        assert all(lp.top[0][1] >= lp.logprob - 1e-6 for lp in logprobs[1:])


def test_prompt_logprobs_are_checked_like_logprobs():
    with pytest.raises(ValueError, match="prompt_logprobs must be in"):
        SamplingParams(prompt_logprobs=21)
