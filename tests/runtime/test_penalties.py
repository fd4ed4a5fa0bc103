"""Logit bias, presence / frequency / repetition penalties and min_p: the row adjustment against transformers'
RepetitionPenaltyLogitsProcessor and OpenAI's documented formula (exact, FP32), and in the sampler (the returned
log-probabilities stay the model's own)."""

import math

import pytest
import torch
from transformers import RepetitionPenaltyLogitsProcessor

from runtime.penalties import adjusted_logits
from runtime.sampling import Sampler, SamplingError, SamplingParams, make_generator

V = 50


def test_repetition_penalty_is_transformers_over_prompt_and_completion():
    torch.manual_seed(0)
    logits = torch.randn(V) * 3  # [V], positive and negative logits
    prompt, completion = [3, 7, 7, 12], [12, 30, 41]
    ours = adjusted_logits(logits, SamplingParams(repetition_penalty=1.3), prompt, completion)
    reference = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([prompt + completion]), logits[None].clone())[0]
    assert torch.equal(ours, reference)


def test_presence_and_frequency_penalties_are_openais_formula_over_the_completion():
    logits = torch.zeros(V)
    params = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25)
    ours = adjusted_logits(logits, params, prompt_ids=[1, 2, 2], completion_ids=[2, 5, 5, 5])
    expected = torch.zeros(V)
    expected[2] = -(0.25 * 1 + 0.5)  # generated once (its prompt occurrences do not count)
    expected[5] = -(0.25 * 3 + 0.5)  # generated three times
    assert torch.equal(ours, expected)


def test_logit_bias_adds_to_the_named_tokens_and_leaves_the_input_alone():
    logits = torch.zeros(V)
    ours = adjusted_logits(logits, SamplingParams(logit_bias=((4, 100.0), (9, -100.0))), [1], [])
    assert (ours[4], ours[9], ours.abs().sum()) == (100.0, -100.0, 200.0) and logits.abs().sum() == 0


def test_the_sampler_chooses_from_adjusted_logits_and_returns_the_models_logprobs():
    logits = torch.tensor([[2.0, 1.0, 0.0]])  # [1, V=3]
    params = SamplingParams(temperature=0.0, logit_bias=((2, 5.0),), logprobs=0)
    tokens, logprobs = Sampler()(logits, [params], [None], [([0], [])])
    assert tokens == [2]  # 0.0 + 5 beats 2.0
    assert logprobs[0].logprob == pytest.approx(float(torch.log_softmax(logits[0], -1)[2]))
    unadjusted, _ = Sampler()(logits, [SamplingParams(temperature=0.0)], [None])
    assert unadjusted == [0]


def test_min_p_keeps_exactly_the_tokens_at_least_that_likely_relative_to_the_best():
    probs = torch.tensor([0.5, 0.25, 0.125, 0.0625, 0.0625])
    gen, params = make_generator(0), SamplingParams(min_p=0.3)  # keeps p >= 0.15: tokens 0 and 1
    drawn = {Sampler()(probs.log()[None], [params], [gen])[0][0] for _ in range(300)}
    assert drawn == {0, 1}


@pytest.mark.parametrize("field, value, message", [
    ("presence_penalty", 2.5, "presence_penalty must be in [-2, 2]"),
    ("frequency_penalty", -3.0, "frequency_penalty must be in [-2, 2]"),
    ("repetition_penalty", 0.0, "repetition_penalty must be in [0.01, 100]"),
    # past these an fp32 logit overflows to inf (or 0 x inf is NaN) and the row's softmax is NaN
    ("repetition_penalty", math.inf, "repetition_penalty must be in [0.01, 100]"),
    ("repetition_penalty", math.nan, "repetition_penalty must be in [0.01, 100]"),
    ("repetition_penalty", 1e-40, "repetition_penalty must be in [0.01, 100]"),
    ("min_p", 1.5, "min_p must be in [0, 1]"),
    ("logit_bias", ((1, 200.0),), "logit_bias values must be in [-100, 100]"),
])
def test_out_of_range_values_are_refused(field, value, message):
    with pytest.raises(SamplingError, match=message.replace("[", r"\[").replace("]", r"\]")):
        SamplingParams(**{field: value})
