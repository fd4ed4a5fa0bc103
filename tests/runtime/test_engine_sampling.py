"""The sampler: greedy, temperature / top-k / top-p cuts, per-request seeds, logprobs, parameter checks."""

import math
import pickle

import pytest
import torch

from runtime.sampling import Sampler, SamplingError, SamplingParams, make_generator

# probabilities 0.5, 0.25, 0.125, 0.0625, 0.0625 over five tokens (logits are their logs)
PROBS = torch.tensor([0.5, 0.25, 0.125, 0.0625, 0.0625])
LOGITS = PROBS.log()[None, :]  # [1, V]
DRAWS = 400


def draws(params: SamplingParams, seed: int = 0) -> set[int]:
    gen = make_generator(seed)
    return {Sampler()(LOGITS, [params], [gen])[0][0] for _ in range(DRAWS)}


def test_greedy_takes_the_argmax_of_every_row():
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 1.0]])
    tokens, logprobs = Sampler()(logits, [SamplingParams(temperature=0.0)] * 2, [None, None])
    assert tokens == [1, 0] and logprobs == [None, None]


@pytest.mark.parametrize("temperature", [1e-6, 1e-40])
def test_a_temperature_too_small_to_sample_by_is_greedy(temperature):
    """As vLLM, below 1e-5: dividing the logits by 1e-40 overflowed them to inf, their softmax was NaN, and the draw
    took the vocabulary's last token."""
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 1.0]])
    params = SamplingParams(temperature=temperature)
    assert Sampler()(logits, [params] * 2, [make_generator(0), make_generator(1)])[0] == [1, 0]


@pytest.mark.parametrize(
    "params, allowed",
    [
        (SamplingParams(top_k=2), {0, 1}),
        (SamplingParams(top_p=0.5), {0}),  # the first token alone holds the mass
        (SamplingParams(top_p=0.7), {0, 1}),
        (SamplingParams(top_p=0.8), {0, 1, 2}),
        (SamplingParams(), {0, 1, 2, 3, 4}),
    ],
)
def test_cuts_keep_exactly_the_allowed_tokens(params, allowed):
    assert draws(params) == allowed


def test_draws_follow_the_distribution():
    gen, n = make_generator(0), 4000
    tokens = [Sampler()(LOGITS, [SamplingParams()], [gen])[0][0] for _ in range(n)]
    counts = torch.bincount(torch.tensor(tokens), minlength=PROBS.numel()).double()
    sigma = (n * PROBS * (1 - PROBS)).sqrt()
    assert ((counts - n * PROBS).abs() <= 4 * sigma).all(), counts  # within 4 binomial sigmas of n * p


def test_the_same_seed_gives_the_same_draws_and_another_seed_differs():
    params = SamplingParams(temperature=1.0, seed=3)
    sampler = Sampler()

    def sequence(seed):
        gen = make_generator(seed)
        return [sampler(LOGITS, [params], [gen])[0][0] for _ in range(50)]

    assert sequence(3) == sequence(3) != sequence(4)


def test_logprobs_are_those_of_the_model_distribution():
    params = SamplingParams(temperature=0.0, logprobs=2)
    (token,), (lp,) = Sampler()(LOGITS, [params], [None])
    assert token == 0 and lp.logprob == pytest.approx(math.log(0.5), abs=1e-6)
    assert [t for t, _ in lp.top] == [0, 1] and lp.top[1][1] == pytest.approx(math.log(0.25), abs=1e-6)


@pytest.mark.parametrize(
    "kwargs, field",
    [({"temperature": -0.1}, "temperature"), ({"top_p": 0.0}, "top_p"), ({"top_k": -2}, "top_k"),
     ({"temperature": math.inf}, "temperature"), ({"temperature": math.nan}, "temperature"),
     ({"max_tokens": 0}, "max_tokens"), ({"logprobs": 21}, "logprobs"), ({"stop": ("",)}, "stop")],
)
def test_out_of_range_parameters_name_the_field(kwargs, field):
    with pytest.raises(SamplingError, match=field):
        SamplingParams(**kwargs)


def test_top_k_minus_one_is_no_cut_as_in_vllm():
    assert SamplingParams(top_k=-1).top_k == 0 and draws(SamplingParams(top_k=-1)) == set(range(5))


def test_a_sampling_error_survives_pickling_with_its_field():
    # Ray pickles an error raised in a replica to hand it to the router; a required `field` made unpickling fail
    error = pickle.loads(pickle.dumps(SamplingError("top_p must be in (0, 1], got 2", "top_p")))
    assert isinstance(error, SamplingError) and error.field == "top_p" and "top_p must be" in str(error)


def _seeded_draws(seed: int) -> list[int]:
    gen = make_generator(seed)
    return [Sampler()(LOGITS, [SamplingParams(seed=seed)], [gen])[0][0] for _ in range(50)]


@pytest.mark.parametrize("seed, alias", [(1, 1 + 2**32), (5, 5 + 2**40), (2**32 - 1, -1), (7, 7 - 2**32),
                                         (2**63 - 1, -1)])
def test_seeds_that_differ_above_32_bits_draw_differently(seed, alias):
    """torch's CPU generator keeps a seed's low 32 bits: these pairs drew the same samples."""
    assert _seeded_draws(seed) != _seeded_draws(alias)
    assert _seeded_draws(alias) == _seeded_draws(alias)


@pytest.mark.parametrize("seed", [0, 3, 2**31, 2**32 - 1])
def test_a_seed_below_2_to_the_32_draws_what_torch_seeded_with_it_draws(seed):
    """Seeds in [0, 2^32) are passed to torch as they are: their samples did not change."""
    gen = torch.Generator()
    gen.manual_seed(seed)
    assert make_generator(seed).get_state().equal(gen.get_state())
