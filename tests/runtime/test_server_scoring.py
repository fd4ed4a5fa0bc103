"""A prompt scored for several choices, on the tiny model: /v1/completions' echo with logprobs and n > 1 (or
best_of), and chat's prompt_logprobs with n > 1, compute the prompt once; the other choices reuse its blocks and
echo its scores. A scoring-only request (echo, max_tokens 0) with best_of scores once."""

import json

import httpx
import pytest

from tests.runtime.test_server import MODEL_NAME, server

__all__ = ["server"]  # the module's server, for the tests below

BLOCK = 4  # the module server's block size


def complete(server, **body) -> httpx.Response:
    return httpx.post(f"{server[0]}/v1/completions", json={"model": MODEL_NAME, **body}, timeout=60)


def streamed_choices(server, **body) -> dict[int, list[dict]]:
    """Each choice's entries of a streamed completion, in order."""
    entries: dict[int, list[dict]] = {}
    with httpx.stream("POST", f"{server[0]}/v1/completions", json={"model": MODEL_NAME, **body, "stream": True},
                      timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    entries.setdefault(choice["index"], []).append(choice)
    return entries


def prompt_work(server, send) -> tuple[int, int]:
    """The prompt tokens the engine computed and reused while `send()` ran."""
    stats = server[1].engine.stats
    before = stats.prompt_tokens_computed, stats.prompt_tokens_reused
    send()
    return stats.prompt_tokens_computed - before[0], stats.prompt_tokens_reused - before[1]


def once_for(prompt_len: int, others: int) -> tuple[int, int]:
    """Computed and reused prompt tokens when one request computes the prompt and `others` reuse its full blocks
    (all but the last token's, which gives the logits)."""
    shared = (prompt_len - 1) // BLOCK * BLOCK
    return prompt_len + others * (prompt_len - shared), others * shared


@pytest.mark.parametrize("streamed", [False, True])
def test_echoed_logprobs_of_n_choices_score_the_prompt_once(server, streamed):
    """Each choice asked for its prompt's log-probabilities, which reuse no cached prefix: n choices computed the
    prompt n times."""
    prompt = f"echo scored once for three choices, {'streamed' if streamed else 'whole'}"
    body = {"prompt": prompt, "n": 3, "echo": True, "logprobs": 1, "max_tokens": 2, "seed": 1}
    replies = []
    if streamed:
        work = prompt_work(server, lambda: replies.extend(
            [e for entries in streamed_choices(server, **body).values() for e in entries[:1]]))
    else:
        work = prompt_work(server, lambda: replies.extend(complete(server, **body).json()["choices"]))
    assert work == once_for(len(prompt), 2)
    alone = complete(server, prompt=prompt, echo=True, logprobs=1, max_tokens=0).json()["choices"][0]["logprobs"]
    assert len(replies) == 3
    for choice in replies:  # a streamed choice's first entry holds the echoed prompt and its scores
        assert choice["text"].startswith(prompt)
        echoed = {key: values[:len(prompt)] for key, values in choice["logprobs"].items()}
        assert echoed["tokens"] == alone["tokens"] and echoed["top_logprobs"][0] is None
        assert echoed["token_logprobs"][1:] == pytest.approx(alone["token_logprobs"][1:], abs=1e-5)


def test_chat_prompt_logprobs_with_n_choices_score_the_prompt_once(server):
    """Chat's later choices asked for none, but found no blocks to wait for: the scoring choice's were known only
    once it had computed some, so the second choice computed the prompt again."""
    messages = [{"role": "user", "content": "chat prompt scored once for three choices"}]
    body = {"model": MODEL_NAME, "messages": messages, "n": 3, "prompt_logprobs": 0, "max_tokens": 2}
    replies = []
    work = prompt_work(server, lambda: replies.append(
        httpx.post(f"{server[0]}/v1/chat/completions", json=body, timeout=60).json()))
    prompt_len = replies[0]["usage"]["prompt_tokens"]
    assert len(replies[0]["choices"]) == 3 and len(replies[0]["prompt_logprobs"]) == prompt_len
    assert work == once_for(prompt_len, 2)


def test_a_scoring_request_with_best_of_scores_once(server):
    """Nothing is generated, so every candidate is the same scoring: best_of of them ran, each computing the
    prompt."""
    prompt = "scored once however many candidates"
    body = {"prompt": prompt, "echo": True, "logprobs": 1, "max_tokens": 0}
    replies = []
    work = prompt_work(server, lambda: replies.append(complete(server, **body, best_of=3).json()))
    assert work == (len(prompt), 0)
    alone = complete(server, **body).json()
    assert [c["index"] for c in replies[0]["choices"]] == [0] and replies[0]["usage"] == alone["usage"]
    assert replies[0]["choices"][0]["logprobs"]["token_logprobs"][1:] == pytest.approx(
        alone["choices"][0]["logprobs"]["token_logprobs"][1:], abs=1e-5)
