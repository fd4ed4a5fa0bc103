"""Prompt-lookup speculative decoding: the drafts proposed, the rule that checks them, and an engine that takes them
computing exactly what it computes without them."""

import pytest
import torch

from runtime.engine import FinishReason
from runtime.engine.speculative import propose, verify
from runtime.models.qwen2 import Qwen2ForCausalLM
from runtime.sampling import SamplingParams
from tests.runtime.test_engine import TINY, LetterTokenizer, engine, reference_greedy

GREEDY = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)


@pytest.fixture(scope="module")
def model():  # this module's own: the batch-invariant engine below changes its model in place
    torch.manual_seed(0)
    return Qwen2ForCausalLM(TINY).eval()


def repetitive_prompts(n: int) -> list[list[int]]:
    """Prompts that repeat a phrase (as an agent's context repeats tool-call JSON): drafts to propose from the start."""
    gen = torch.Generator().manual_seed(3)
    out = []
    for _ in range(n):
        phrase = torch.randint(1, TINY.vocab_size, (int(torch.randint(3, 7, (1,), generator=gen)),), generator=gen)
        noise = torch.randint(1, TINY.vocab_size, (int(torch.randint(0, 5, (1,), generator=gen)),), generator=gen)
        out.append([*phrase.tolist(), *noise.tolist(), *phrase.tolist(), *noise.tolist(), *phrase.tolist()[:2]])
    return out


def test_propose_copies_what_followed_the_latest_longest_match():
    assert propose([1, 2, 3, 9, 1, 2, 3, 7, 8, 1, 2, 3], k=2) == [7, 8]  # the latest earlier "1 2 3"
    assert propose([5, 1, 2, 4, 6, 1, 2], k=3) == [4, 6, 1]
    assert propose([1, 2, 3, 4, 5, 2, 9, 9, 4, 5], k=3) == [2, 9, 9]  # "4 5" (n=2) when no longer suffix recurs
    assert propose([1, 2, 3, 4], k=3) == []  # no suffix of two tokens or more occurred before
    assert propose([1, 2, 1, 2], k=0) == []
    assert propose([7, 7, 7], k=5) == [7]  # the match ends at the last token: what follows it is all there is


def latest_longest_match(token_ids: list[int], k: int) -> list[int]:
    """propose's rule, written plainly: every earlier window of n tokens compared with the last n, longest n first."""
    for n in range(min(4, len(token_ids) - 1), 1, -1):
        starts = [s for s in range(len(token_ids) - n) if token_ids[s : s + n] == token_ids[-n:]]
        if starts:
            return token_ids[starts[-1] + n : starts[-1] + n + k]
    return []


def test_propose_finds_the_match_that_comparing_every_window_finds():
    """propose extends only the earlier positions of the last token; over small vocabularies (many partial matches)
    it proposes what comparing every window proposes."""
    gen = torch.Generator().manual_seed(0)
    for trial in range(400):
        length, vocab = int(torch.randint(1, 60, (1,), generator=gen)), 2 + trial % 5
        token_ids = torch.randint(0, vocab, (length,), generator=gen).tolist()
        assert propose(token_ids, 3) == latest_longest_match(token_ids, 3), token_ids


def test_verify_greedy_takes_drafts_while_they_are_the_argmax_then_one_of_its_own():
    logits = torch.full((4, 10), -5.0)
    for row, best in enumerate([3, 4, 8, 6]):
        logits[row, best] = 5.0
    assert verify(logits, [3, 4, 5], GREEDY, None)[0] == [3, 4, 8]  # the third draft is not the argmax: 8 instead
    assert verify(logits, [3, 4, 8], GREEDY, None)[0] == [3, 4, 8, 6]  # all taken, plus the last row's token
    assert verify(logits, [1, 4, 8], GREEDY, None)[0] == [3]
    tokens, logprobs = verify(logits, [3, 4], SamplingParams(temperature=0.0, logprobs=1), None)
    assert tokens == [3, 4, 8] and len(logprobs) == 3
    assert logprobs[0].top[0][0] == 3
    assert logprobs[2].logprob == pytest.approx(float(torch.log_softmax(logits[2], 0)[8]))


@pytest.mark.parametrize("draft", [0, 2])  # the likeliest token, and an unlikely one
def test_verify_sampled_keeps_the_model_distribution(draft):
    """The first token taken is distributed as softmax(logits / T), whatever the draft (rejection rule)."""
    logits = torch.tensor([[2.0, 1.0, -1.0, 0.5], [0.0, 0.0, 0.0, 0.0]])
    params = SamplingParams(temperature=0.8)
    gen = torch.Generator().manual_seed(0)
    draws = 20000
    counts = torch.zeros(4)
    for _ in range(draws):
        counts[verify(logits, [draft], params, gen)[0][0]] += 1
    expected = torch.softmax(logits[0] / 0.8, dim=0)
    assert torch.allclose(counts / draws, expected, atol=0.012)  # about 4 standard errors at 20000 draws


def test_greedy_speculation_equals_the_plain_model_and_takes_drafts(model):
    ps = repetitive_prompts(4)
    eng = engine(model)
    out = eng.generate(ps, GREEDY)
    assert [c.token_ids for c in out] == [reference_greedy(model, p, GREEDY.max_tokens) for p in ps]
    stats = eng.speculation
    assert 0 < stats.accepted < stats.drafted  # drafts were taken, and some were refused


def test_speculation_keeps_outputs_with_chunks_preemption_and_the_prefix_cache(model):
    ps = repetitive_prompts(8)
    expected = [c.token_ids for c in engine(model, speculative_tokens=0).generate(ps, GREEDY)]
    tight = engine(model, num_blocks=40, max_num_batched_tokens=12)  # drafts trimmed to the budget, preemptions
    assert [c.token_ids for c in tight.generate(ps, GREEDY)] == expected
    assert tight.scheduler.num_preemptions > 0 and tight.speculation.accepted > 0
    assert tight.scheduler.block_manager.num_free_blocks == 40
    cached = engine(model)
    assert [c.token_ids for c in cached.generate(ps + ps, GREEDY)] == expected + expected
    assert cached.stats.prompt_tokens_reused > 0


def test_stops_inside_the_drafts_end_where_they_would_without_them(model):
    ps = repetitive_prompts(6)
    base = [c.token_ids for c in engine(model, speculative_tokens=0).generate(ps, GREEDY)]
    # the tiny random model falls into a six-token loop, whose repeats are drafted and taken: the first output's
    # two loops and one token more end in its third loop, on a step that takes several tokens
    stop_text = "".join(LetterTokenizer.Decoder().push(t) for t in base[0][:13])
    reasons, finishing_steps = [], []
    for params in (SamplingParams(temperature=0.0, max_tokens=25, ignore_eos=True),
                   SamplingParams(temperature=0.0, max_tokens=40, stop_token_ids=(base[1][30],), ignore_eos=True),
                   SamplingParams(temperature=0.0, max_tokens=40, stop=(stop_text,), ignore_eos=True)):
        plain = engine(model, speculative_tokens=0).generate(ps, params)
        eng = engine(model)
        for p in ps:
            eng.add_request(p, params)
        while eng.has_unfinished():
            finishing_steps += [len(out.new_token_ids) for out in eng.step() if out.finished]
        spec = engine(model).generate(ps, params)
        assert [(c.token_ids, c.text, c.finish_reason) for c in spec] == [
            (c.token_ids, c.text, c.finish_reason) for c in plain]
        reasons.append({c.finish_reason for c in spec})
    assert reasons[0] == {FinishReason.LENGTH} and FinishReason.STOP in reasons[1] and FinishReason.STOP in reasons[2]
    assert max(finishing_steps) > 1  # some request ended on a step that took drafts


def test_logprobs_come_one_per_token_as_without_drafts(model):
    ps = repetitive_prompts(3)
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True, logprobs=2)

    def collect(eng):
        got = {}
        for p in ps:
            rid = eng.add_request(p, params)
            got[rid] = []
        while eng.has_unfinished():
            for out in eng.step():
                pairs = zip(out.new_token_ids, out.new_logprobs, strict=True)  # one logprob per token
                got[out.request_id] += [(t, lp.logprob) for t, lp in pairs]
        return list(got.values())

    spec, plain = collect(engine(model)), collect(engine(model, speculative_tokens=0))
    for s, p in zip(spec, plain, strict=True):
        assert [t for t, _ in s] == [t for t, _ in p]
        assert [lp for _, lp in s] == pytest.approx([lp for _, lp in p], abs=1e-4)  # rows of a span vs decodes


def test_seeded_sampling_with_speculation_is_reproducible(model):
    ps = repetitive_prompts(4)
    params = [SamplingParams(temperature=0.7, seed=10 + i, max_tokens=30, ignore_eos=True) for i in range(len(ps))]
    first = [c.token_ids for c in engine(model).generate(ps, params)]
    assert [c.token_ids for c in engine(model).generate(ps, params)] == first


def test_seeded_sampling_takes_the_same_tokens_with_drafts_as_without(model):
    """A seeded sequence draws one uniform per token taken, drafts or not: checking a draft drew one more (and a
    rejected one two), so a seeded answer changed with the drafts proposed, which the batch decides (fewer per
    sequence when more decode: speculative_max_rows), and a request's n choices were not what their seeds give
    alone."""
    ps = repetitive_prompts(4)
    # sampled, but close enough to greedy that the answers repeat the prompts' phrases: drafts to check
    params = [SamplingParams(temperature=0.1, seed=10 + i, max_tokens=30, ignore_eos=True) for i in range(len(ps))]
    expected = [c.token_ids for c in engine(model, speculative_tokens=0).generate(ps, params)]
    eng = engine(model)
    assert [c.token_ids for c in eng.generate(ps, params)] == expected
    assert 0 < eng.speculation.accepted < eng.speculation.drafted  # drafts taken, and some refused
    alone = [engine(model).generate([p], sp)[0].token_ids for p, sp in zip(ps, params, strict=True)]
    assert alone == expected


def test_no_drafts_in_batch_invariant_mode_or_when_off(model):
    ps = repetitive_prompts(2)
    for eng in (engine(model, speculative_tokens=0),
                engine(model, batch_invariant=True, max_num_batched_tokens=64, max_num_seqs=4)):
        eng.generate(ps, GREEDY)
        assert eng.speculation.drafted == 0


@pytest.mark.parametrize("adjust", [
    {"frequency_penalty": 0.2, "presence_penalty": 0.1},
    {"repetition_penalty": 1.1},
    {"logit_bias": ((5, 2.0), (9, -3.0))},
])
def test_penalized_greedy_speculation_equals_the_plain_penalized_model(model, adjust):
    """Each draft's row is penalized as if the drafts before it had been generated: the same tokens as without
    drafts, and drafts taken."""
    ps = repetitive_prompts(4)
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True, **adjust)
    expected = [c.token_ids for c in engine(model, speculative_tokens=0).generate(ps, params)]
    eng = engine(model)
    assert [c.token_ids for c in eng.generate(ps, params)] == expected
    assert eng.speculation.accepted > 0


def test_verify_penalizes_each_row_as_of_the_drafts_before_it():
    logits = torch.zeros(3, 6)
    logits[:, 2] = 1.0  # 2 is every row's argmax, unpenalized
    params = SamplingParams(temperature=0.0, frequency_penalty=2.0)
    # the first draft 2 is taken; row 1 then sees 2 generated once (1 - 2 < 0) and picks 0 instead of draft 2
    assert verify(logits, [2, 2], params, None, history=([4], []))[0] == [2, 0]
    assert verify(logits, [2, 2], GREEDY, None)[0] == [2, 2, 2]
