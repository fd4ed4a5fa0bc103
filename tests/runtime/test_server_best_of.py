"""`best_of` on /v1/completions, as OpenAI's legacy API and vLLM V0 serve it, on the tiny model: best_of candidates
sampled, the n with the highest cumulative log-probability of their generated tokens returned, usage counting every
candidate; the prompt prefilled once for all of them; refusals naming the field."""

import httpx
import openai
import pytest

from tests.runtime.test_server import MODEL_NAME, USER, server

__all__ = ["server"]  # the module's server, for the tests below

SAMPLING = {"temperature": 1.0, "max_tokens": 8}
SEED = 5  # candidate j is what seed + j gives alone (fanout.choice_params); this seed's best are not its first


def complete(server, **body) -> httpx.Response:
    return httpx.post(f"{server[0]}/v1/completions", json={"model": MODEL_NAME, **body}, timeout=60)


def ranked_candidates(server, prompt: str, count: int) -> list[tuple[float, str]]:
    """Every candidate best_of=count samples, as n=count gives them (same seeds), with its cumulative
    log-probability, best first."""
    every = complete(server, prompt=prompt, n=count, seed=SEED, logprobs=0, **SAMPLING).json()["choices"]
    scored = [(sum(c["logprobs"]["token_logprobs"]), c["text"], c["index"]) for c in every]
    ranked = sorted(scored, key=lambda s: s[0], reverse=True)
    assert [s[2] for s in ranked[:2]] != [0, 1], "this seed's best two are its first two: pick another"
    return [(logprob, text) for logprob, text, _ in ranked]


def test_best_of_returns_the_n_candidates_with_the_highest_cumulative_logprob(server):
    """best_of other than n was refused: clients of OpenAI's legacy API and of vLLM V0 could not ask for it."""
    prompt = "the candidates of "
    ranked = ranked_candidates(server, prompt, 4)
    reply = complete(server, prompt=prompt, n=2, best_of=4, seed=SEED, **SAMPLING).json()
    assert [c["index"] for c in reply["choices"]] == [0, 1]
    assert [c["text"] for c in reply["choices"]] == [text for _, text in ranked[:2]]
    assert all(c["logprobs"] is None for c in reply["choices"])  # not asked for: taken only to rank by
    every = complete(server, prompt=prompt, n=4, seed=SEED, **SAMPLING).json()
    assert reply["usage"] == every["usage"]  # every candidate's tokens, the prompt's once
    # asked for, the logprobs are the returned candidates' own; their sums rank them
    shown = complete(server, prompt=prompt, n=2, best_of=4, seed=SEED, logprobs=1, **SAMPLING).json()["choices"]
    sums = [sum(c["logprobs"]["token_logprobs"]) for c in shown]
    assert sums == pytest.approx([logprob for logprob, _ in ranked[:2]], abs=1e-4)


def test_best_of_ranks_each_prompts_candidates_and_the_openai_client_asks_for_it(server, client):
    prompts = ["the candidates of ", "other candidates "]
    best = [ranked_candidates(server, p, 3)[0][1] for p in prompts]
    reply = client.completions.create(model=MODEL_NAME, prompt=prompts, best_of=3, seed=SEED, **SAMPLING)
    assert [c.text for c in reply.choices] == best and [c.index for c in reply.choices] == [0, 1]


def test_best_of_prefills_the_prompt_once(server):
    engine = server[1].engine
    prompt = "a prompt no other test sends, prefilled once"
    # its full blocks of 4 short of its last token (which the engine always computes: it gives the logits)
    shared = (len(prompt) - 1) // 4 * 4
    before = engine.stats.prompt_tokens_computed, engine.stats.prompt_tokens_reused
    complete(server, prompt=prompt, best_of=4, **SAMPLING)
    after = engine.stats.prompt_tokens_computed, engine.stats.prompt_tokens_reused
    # the first candidate computes the prompt; the three others reuse its blocks and compute only the rest
    assert (after[0] - before[0], after[1] - before[1]) == (len(prompt) + 3 * (len(prompt) - shared), 3 * shared)


@pytest.mark.parametrize("body", [
    {"n": 3, "best_of": 2},  # fewer candidates than choices
    {"best_of": 0},
    {"best_of": 65},
    {"best_of": 2, "stream": True},  # OpenAI refuses it: the best are known once every candidate has ended
    {"prompt": ["a", "b", "c"], "best_of": 22},  # 66 candidates, past 64
])
def test_best_of_the_server_cannot_serve_is_a_400_naming_it(server, body):
    refused = complete(server, **{"prompt": "abc", **body, "max_tokens": 2})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == "best_of", refused.text


def test_a_chat_refuses_best_of_other_than_n(server, client):
    """OpenAI's chat API has no best_of (vLLM V1 none anywhere); ignored, it returned n samples that were not the
    best of more."""
    refused = httpx.post(f"{server[0]}/v1/chat/completions",
                         json={"model": MODEL_NAME, "messages": USER, "best_of": 3, "max_tokens": 2})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "best_of", refused.text
    served = httpx.post(f"{server[0]}/v1/chat/completions",
                        json={"model": MODEL_NAME, "messages": USER, "n": 2, "best_of": 2, "max_tokens": 2})
    assert served.status_code == 200 and len(served.json()["choices"]) == 2


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0)
