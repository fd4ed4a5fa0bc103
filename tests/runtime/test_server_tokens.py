"""The server's token routes and vLLM's request extensions, on the tiny model: /tokenize counts what the routes send,
/detokenize reads ids back, stop_token_ids ends a completion, priority is taken."""

import httpx

from tests.runtime.test_server import CONTEXT, MODEL_NAME, PROMPT, USER, CharTokenizer, client, complete, server

__all__ = ["client", "server"]  # the module's server and client, for the tests below


def test_tokenize_counts_what_the_routes_send_and_detokenize_reads_ids_back(server, client):
    url = server[0]
    counted = httpx.post(f"{url}/tokenize", json={"model": MODEL_NAME, "messages": USER}).json()
    reply = client.chat.completions.create(model=MODEL_NAME, messages=USER, max_tokens=2)
    assert counted["count"] == len(counted["tokens"]) == reply.usage.prompt_tokens
    assert counted["max_model_len"] == CONTEXT
    raw = httpx.post(f"{url}/tokenize", json={"prompt": PROMPT}).json()
    assert raw["count"] == complete(server, prompt=PROMPT, max_tokens=1).json()["usage"]["prompt_tokens"]
    assert httpx.post(f"{url}/detokenize", json={"tokens": raw["tokens"]}).json() == {"prompt": PROMPT}
    for route, body, param in [("tokenize", {"prompt": PROMPT, "messages": USER}, "prompt"),
                               ("tokenize", {}, "prompt"), ("detokenize", {"tokens": [5, 400]}, "tokens"),
                               ("tokenize", {"prompt": "x", "model": "other"}, "model")]:
        refused = httpx.post(f"{url}/{route}", json=body)
        assert refused.status_code in (400, 404) and refused.json()["error"]["param"] == param, (route, body)


def test_stop_token_ids_end_the_completion_before_that_token(server):
    free = complete(server, prompt=PROMPT, max_tokens=12, temperature=0, ignore_eos=True).json()["choices"][0]
    ids = CharTokenizer().encode(free["text"])  # one token per character (EOS, taken here, writes none)
    stopped = complete(server, prompt=PROMPT, max_tokens=12, temperature=0, ignore_eos=True,
                       stop_token_ids=[ids[5]]).json()["choices"][0]
    assert stopped["finish_reason"] == "stop" and stopped["text"] == free["text"][:ids.index(ids[5])]
    refused = complete(server, prompt=PROMPT, stop_token_ids=[97])
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "stop_token_ids"


def test_a_prioritised_request_is_served_the_same(server):
    plain = complete(server, prompt=PROMPT, max_tokens=6, temperature=0).json()["choices"][0]["text"]
    urgent = complete(server, prompt=PROMPT, max_tokens=6, temperature=0, priority=-3).json()
    assert urgent["choices"][0]["text"] == plain


def test_chat_prompt_logprobs_score_the_rendered_messages_as_completions_echo_does(server):
    """vLLM's `prompt_logprobs` on chat: one entry per token of the rendered prompt (None first), the token's own
    log-probability the one `/v1/completions` with echo gives for the same ids."""
    url = server[0]
    ids = httpx.post(f"{url}/tokenize", json={"model": MODEL_NAME, "messages": USER}).json()["tokens"]
    chat = httpx.post(f"{url}/v1/chat/completions", json={"model": MODEL_NAME, "messages": USER, "max_tokens": 2,
                                                          "prompt_logprobs": 2, "n": 2}).json()
    scored = chat["prompt_logprobs"]
    assert len(scored) == len(ids) and scored[0] is None and len(chat["choices"]) == 2
    echoed = complete(server, prompt=ids, max_tokens=0, echo=True, logprobs=2).json()["choices"][0]["logprobs"]
    own = [entry[str(token)]["logprob"] for token, entry in zip(ids[1:], scored[1:], strict=True)]
    assert own == echoed["token_logprobs"][1:]
    ranked = [e for e in scored[1:] if all(v["rank"] is not None for v in e.values())]
    assert ranked and all(sorted(v["rank"] for v in e.values())[:2] == [1, 2] for e in ranked)
    refused = httpx.post(f"{url}/v1/chat/completions", json={"model": MODEL_NAME, "messages": USER,
                                                             "prompt_logprobs": 1, "stream": True})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "prompt_logprobs"


def test_chat_prompt_logprobs_give_each_prompt_tokens_rank_in_the_vocabulary(server):
    """vLLM's `rank` is the token's rank in the whole vocabulary (1: the likeliest), also when it is not among the
    alternatives asked for: with 0 of them only the prompt token is named, with its rank."""
    url = server[0]
    ids = httpx.post(f"{url}/tokenize", json={"model": MODEL_NAME, "messages": USER}).json()["tokens"]
    for alternatives in (0, 1):
        scored = httpx.post(f"{url}/v1/chat/completions", json={
            "model": MODEL_NAME, "messages": USER, "max_tokens": 1, "prompt_logprobs": alternatives}).json()[
            "prompt_logprobs"]
        for token, entry in zip(ids[1:], scored[1:], strict=True):
            own = entry[str(token)]
            assert isinstance(own["rank"], int) and own["rank"] >= 1, (alternatives, entry)
            if alternatives == 0:
                assert list(entry) == [str(token)]
            else:
                best = next(v for v in entry.values() if v["rank"] == 1)
                assert (own["rank"] == 1) == (own["logprob"] >= best["logprob"]), entry
