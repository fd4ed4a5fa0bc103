"""LLMEngine on a tiny random Qwen2: batching, chunking, prefix cache and preemption never change greedy outputs."""

import pytest
import torch
from transformers import RepetitionPenaltyLogitsProcessor

from runtime.engine import EngineConfig, FinishReason, LLMEngine, PromptTooLong, RequestError
from runtime.models.qwen2 import Qwen2Config, Qwen2ForCausalLM
from runtime.sampling import SamplingParams

TINY = Qwen2Config(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=512)
GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
EOS = 0


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Qwen2ForCausalLM(TINY).eval()


class LetterTokenizer:
    """Token i is one letter: enough text for stop strings."""

    eos_ids = frozenset({EOS})

    class Decoder:
        def push(self, token_id: int) -> str:
            return chr(ord("a") + token_id % 26)

        def finish(self) -> str:
            return ""

    def incremental_decoder(self):
        return self.Decoder()


def engine(model, **overrides) -> LLMEngine:
    config = dict(block_size=4, num_blocks=256, max_num_seqs=8, max_num_batched_tokens=64)
    return LLMEngine(model, LetterTokenizer(), config=EngineConfig(**{**config, **overrides}))


def prompts(n: int, seed: int = 1) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(1, TINY.vocab_size, (int(torch.randint(3, 30, (1,), generator=gen)),), generator=gen).tolist()
            for _ in range(n)]


def reference_greedy(model, prompt: list[int], steps: int) -> list[int]:
    """No engine context: the model's plain causal path, whole sequence recomputed every token."""
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(steps):
            logits = model.compute_logits(model(torch.tensor(ids), torch.arange(len(ids))))
            ids.append(int(logits[-1].argmax()))
    return ids[len(prompt):]


def test_engine_matches_the_plain_model(model):
    ps = prompts(2)
    out = engine(model).generate(ps, GREEDY)
    assert [c.token_ids for c in out] == [reference_greedy(model, p, GREEDY.max_tokens) for p in ps]


def reference_penalized_greedy(model, prompt: list[int], steps: int, repetition: float, frequency: float,
                               presence: float) -> list[int]:
    """The plain model, its last row adjusted each step by transformers' repetition penalty (prompt and completion)
    and OpenAI's presence / frequency formula (completion only), then the argmax."""
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(steps):
            row = model.compute_logits(model(torch.tensor(ids), torch.arange(len(ids))))[-1:]  # [1, V]
            row = RepetitionPenaltyLogitsProcessor(repetition)(torch.tensor([ids]), row)[0]
            completion = ids[len(prompt):]
            for token in set(completion):
                row[token] -= frequency * completion.count(token) + presence
            ids.append(int(row.argmax()))
    return ids[len(prompt):]


def test_penalized_greedy_requests_match_the_reference_beside_plain_ones_with_speculation_on(model):
    # prompts that repeat themselves: prompt lookup has drafts to offer every sequence
    ps = [[5, 6, 7, 8] * 4, [9, 10, 11] * 5, [12, 13, 14, 15] * 4]
    penalized = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, repetition_penalty=1.5,
                               frequency_penalty=0.8, presence_penalty=0.4)
    plain = engine(model, speculative_tokens=4)
    plain.generate(ps, GREEDY)
    assert plain.speculation.drafted > 0  # unpenalized, these prompts are drafted for
    mixed = engine(model, speculative_tokens=4)
    out = mixed.generate(ps, [penalized, GREEDY, penalized])
    for p, completion in zip(ps[::2], out[::2], strict=True):
        assert completion.token_ids == reference_penalized_greedy(model, p, 12, 1.5, 0.8, 0.4)
        assert completion.token_ids != reference_greedy(model, p, 12)  # the penalties changed something
    assert out[1].token_ids == reference_greedy(model, ps[1], 12)


def test_a_batch_of_8_equals_one_at_a_time(model):
    ps = prompts(8)
    batched = engine(model).generate(ps, GREEDY)
    alone = [engine(model).generate([p], GREEDY)[0] for p in ps]
    assert [c.token_ids for c in batched] == [c.token_ids for c in alone]
    assert [c.text for c in batched] == [c.text for c in alone]


def test_chunked_prefill_and_preemption_keep_outputs(model):
    ps = prompts(6, seed=2)
    expected = [c.token_ids for c in engine(model).generate(ps, GREEDY)]
    tight = engine(model, num_blocks=24, max_num_batched_tokens=8)  # 8-token chunks, too few blocks for all
    assert [c.token_ids for c in tight.generate(ps, GREEDY)] == expected
    assert tight.scheduler.num_preemptions > 0
    assert tight.scheduler.block_manager.num_free_blocks == 24


def test_prefix_cache_on_equals_off_and_counters_prove_reuse(model):
    shared = prompts(1, seed=3)[0] * 3  # a long common prefix
    ps = [shared + p for p in prompts(4, seed=4)]
    on, off = engine(model), engine(model, enable_prefix_cache=False)
    out_on, out_off = on.generate(ps, GREEDY), off.generate(ps, GREEDY)
    assert [c.token_ids for c in out_on] == [c.token_ids for c in out_off]
    reused_blocks = len(shared) // 4
    assert [c.num_cached_tokens for c in out_on] == [0] + [reused_blocks * 4] * 3
    assert on.stats.prompt_tokens_reused == 3 * reused_blocks * 4
    assert on.stats.prompt_tokens_computed == sum(map(len, ps)) - on.stats.prompt_tokens_reused
    assert off.stats.prompt_tokens_reused == 0 and off.stats.prompt_tokens_computed == sum(map(len, ps))


def test_seeded_sampling_is_reproducible_whatever_the_batch(model):
    params = SamplingParams(temperature=0.9, top_p=0.9, top_k=40, seed=1234, max_tokens=10, ignore_eos=True)
    p = prompts(1, seed=5)[0]
    alone = engine(model).generate([p], params)[0].token_ids
    in_batch = engine(model).generate([p] + prompts(3, seed=6), [params] + [SamplingParams(max_tokens=10)] * 3)
    assert in_batch[0].token_ids == alone


def test_stop_tokens_stop_strings_and_max_tokens(model):
    p = prompts(1, seed=7)[0]
    free = engine(model).generate([p], GREEDY)[0]
    third = free.token_ids[2]
    by_token = engine(model).generate([p], SamplingParams(temperature=0.0, max_tokens=12, stop_token_ids=(third,)))[0]
    assert by_token.finish_reason is FinishReason.STOP and by_token.token_ids == free.token_ids[:3]
    assert by_token.text == free.text[:2]  # the stop token itself is not text
    stop = free.text[4:6]
    by_string = engine(model).generate([p], SamplingParams(temperature=0.0, max_tokens=12, stop=(stop,)))[0]
    assert by_string.finish_reason is FinishReason.STOP and by_string.text == free.text[: free.text.index(stop)]
    assert free.finish_reason is FinishReason.LENGTH and len(free.token_ids) == GREEDY.max_tokens


def test_logprobs_are_returned_when_asked(model):
    e = engine(model)
    e.add_request(prompts(1)[0], SamplingParams(temperature=0.0, max_tokens=3, logprobs=2))
    taken = []
    while e.has_unfinished():  # a step may take several tokens (speculative drafts): one logprob each
        taken += [pair for o in e.step() for pair in zip(o.new_token_ids, o.new_logprobs, strict=True)]
    assert len(taken) == 3
    for token, lp in taken:
        assert lp.top[0][0] == token and lp.logprob == pytest.approx(lp.top[0][1]) and len(lp.top) == 2


def test_abort_frees_blocks_and_bad_requests_raise(model):
    e = engine(model)
    rid = e.add_request(prompts(1)[0], GREEDY)
    e.step()
    e.abort(rid)
    assert not e.has_unfinished() and e.scheduler.block_manager.num_free_blocks == 256
    with pytest.raises(RequestError, match="empty"):
        e.add_request([], GREEDY)
    with pytest.raises(RequestError, match="context"):
        engine(model, num_blocks=4).add_request(list(range(1, 20)), GREEDY)
    with pytest.raises(RequestError, match=r"logit_bias names token ids outside the vocabulary \(size 97\): \[97\]"):
        e.add_request([1, 2], SamplingParams(logit_bias=((3, 1.0), (97, 1.0))))


def test_the_context_is_at_most_the_models_max_position_embeddings(model):
    """A model never meant to read past max_position_embeddings (512 here) gets no longer context from a larger
    setting or KV cache (1024 tokens of cache here); a prompt that long is refused, as vLLM refuses it."""
    held = engine(model, max_model_len=4096)
    assert held.max_model_len == TINY.max_position_embeddings == 512
    with pytest.raises(PromptTooLong):
        held.generate([[1] * 512], GREEDY)
    assert engine(model, max_model_len=300).max_model_len == 300  # a smaller setting stands
