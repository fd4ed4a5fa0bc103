"""The OpenAI-compatible app over the router (what `python -m runtime serve --replicas R --ep E` runs): one EP = 2
replica of the tiny Kimi checkpoint, requests through httpx's ASGI transport."""

import asyncio
import json
import re
import time

import anyio
import httpx
import pytest

from runtime.engine.llm_engine import RequestError
from runtime.replica.serving import PrefixKeyMiddleware, start_frontend
from runtime.sampling import SamplingParams
from runtime.server.app import create_app
from tests.runtime.replica_fixtures import ENGINE

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.anyio]

BODY = {"model": "tiny-kimi", "messages": [{"role": "user", "content": "name three prime numbers"}],
        "max_tokens": 6, "temperature": 0}
CANCEL_DEADLINE_S = 30
LEAVES = 40


@pytest.fixture(scope="module")
def frontend(ray_cluster, tiny_kimi_path):
    front = start_frontend(tiny_kimi_path, replicas=1, ep=2, engine=ENGINE, dtype="float32")
    yield front
    front.shutdown()


@pytest.fixture
async def client(frontend):
    app = PrefixKeyMiddleware(create_app(frontend, model_name="tiny-kimi"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=120) as c:
        yield c


def _sse_text(body: str) -> tuple[str, list[str]]:
    events = [line.removeprefix("data: ") for line in body.splitlines() if line.startswith("data: ")]
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]), events


async def test_chat_through_the_router_reuses_the_prefix_and_streams_the_same_text(client):
    headers = {"X-Prefix-Key": "job-42"}
    first = (await client.post("/v1/chat/completions", json=BODY, headers=headers)).json()
    again = (await client.post("/v1/chat/completions", json=BODY, headers=headers)).json()
    assert first["choices"][0]["message"] == again["choices"][0]["message"]
    assert 0 < first["usage"]["completion_tokens"] <= BODY["max_tokens"]
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    # the whole prompt but its last (partial) block comes from the replica's prefix cache
    prompt_tokens = again["usage"]["prompt_tokens"]
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == (prompt_tokens - 1) // 4 * 4

    streamed = await client.post("/v1/chat/completions", json=BODY | {"stream": True}, headers=headers)
    text, events = _sse_text(streamed.text)
    assert events[-1] == "[DONE]"
    assert text == (first["choices"][0]["message"]["content"] or "")
    # /metrics counts the router's requests too, and shows the replica's engine as its ranks last reported it
    metrics = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in (await client.get("/metrics")).text.splitlines() if line and not line.startswith("#")}
    model = next(name for name in metrics if name.startswith("heavy_runtime_replicas_up{")).split("{", 1)[1][:-1]
    assert metrics[f"heavy_runtime_time_to_first_token_seconds_count{{{model}}}"] == 3
    assert metrics[f"heavy_runtime_prompt_tokens_total{{{model}}}"] == 3 * prompt_tokens
    assert metrics[f"heavy_runtime_replicas_up{{{model}}}"] == 1
    assert metrics[f'heavy_runtime_replica_up{{{model},replica="0"}}'] == 1
    assert 0 <= metrics[f'heavy_runtime_kv_cache_usage_ratio{{{model},replica="0"}}'] < 1
    assert f'heavy_runtime_num_requests_running{{{model},replica="0"}}' in metrics


async def test_echoed_prompt_logprobs_come_back_through_the_router(client):
    # the prompt's log-probabilities are computed on the replica's ranks and carried back with the first output
    body = {"prompt": [5, 9, 14, 22, 31, 40], "max_tokens": 2, "ignore_eos": True, "temperature": 0, "logprobs": 1,
            "echo": True}
    choice = (await client.post("/v1/completions", json=body)).json()["choices"][0]
    logprobs = choice["logprobs"]["token_logprobs"]
    assert len(logprobs) == 6 + 2 and logprobs[0] is None and all(lp <= 0 for lp in logprobs[1:])
    tops = zip(choice["logprobs"]["tokens"][1:], choice["logprobs"]["top_logprobs"][1:], strict=True)
    assert all(token in top and len(top) in (1, 2) for token, top in tops)  # the token's own and the likeliest


async def test_a_prompt_longer_than_the_context_is_a_400(client):
    long = {"role": "user", "content": "word " * 400}
    response = await client.post("/v1/chat/completions", json=BODY | {"messages": [long]})
    assert response.status_code == 400


async def test_structured_output_holds_through_the_router_and_a_bad_spec_stops_at_the_frontend(client):
    # the ranks' grammar masks hold the tiny checkpoint's random weights to four digits
    body = BODY | {"guided_regex": "[0-9]{4}", "max_tokens": 12}
    reply = (await client.post("/v1/chat/completions", json=body)).json()
    assert re.fullmatch("[0-9]{4}", reply["choices"][0]["message"]["content"]), reply
    assert reply["choices"][0]["finish_reason"] == "stop"
    refused = await client.post("/v1/chat/completions", json=BODY | {"guided_regex": "(unclosed"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "guided_regex"


async def _answered_health(frontend, deadline: float):
    """The replica's health; on a loaded machine a health call can miss the router's timeout (None): ask again."""
    while (health := (await frontend.router.check_health.remote())[0]) is None:
        assert time.monotonic() < deadline, "the replica never answered a health check"
        await anyio.sleep(0.1)
    return health


async def _held_by_ranks(frontend) -> list[int]:
    """How many requests each rank's engine holds (asked directly, past the replica's own bookkeeping)."""
    ranks = await frontend.replicas[0].rank_actors.remote()
    return await asyncio.gather(*(r.__ray_call__.remote(lambda rank: len(rank.engine.requests)) for r in ranks))


async def test_clients_that_leave_free_their_requests_on_every_rank(frontend):
    # A client leaving at once used to wedge the replica about 1 time in 20: the frontend's and the router's
    # recursive `ray.cancel` could cancel the abort on one rank only, and rank 0 stopped answering. Many leaves, at
    # different points of the stream, then every rank must be empty and a new request must still be served.
    aborted_before = (await _answered_health(frontend, time.monotonic() + CANCEL_DEADLINE_S)).aborted
    for leave in range(LEAVES):
        stream = frontend.generate([7] * 20, SamplingParams(temperature=0.0, max_tokens=100, ignore_eos=True))
        for _ in range(1 + leave % 3):
            delta = await anext(stream)
            assert delta.new_token_ids and not delta.finished
        await stream.aclose()  # what the server does when the HTTP client disconnects
    deadline = time.monotonic() + CANCEL_DEADLINE_S
    while True:
        health = await _answered_health(frontend, deadline)
        held = await _held_by_ranks(frontend)
        if health.aborted == aborted_before + LEAVES and health.in_flight == 0 and held == [0, 0]:
            break
        assert time.monotonic() < deadline, f"the abandoned requests were not all freed: {health}, ranks hold {held}"
        await anyio.sleep(0.1)
    finished = [d async for d in frontend.generate([5, 6, 7], SamplingParams(temperature=0.0, max_tokens=4))]
    assert finished[-1].finished and sum(len(d.new_token_ids) for d in finished) == 4


async def test_a_request_id_already_in_flight_is_refused_and_the_first_request_runs_on(frontend):
    # Before, the duplicate took the id's queue on the replica, the ranks refused it, and its clean-up aborted the
    # first request, whose stream then waited for good.
    long = SamplingParams(temperature=0.0, max_tokens=100, ignore_eos=True)  # still running when the duplicate comes
    first = frontend.generate([7] * 20, long, request_id="same-id")
    deltas = [await anext(first)]
    assert not deltas[0].finished
    with pytest.raises(RequestError, match="already in use"):
        await anext(frontend.generate([5, 6, 7], SamplingParams(temperature=0.0, max_tokens=4), request_id="same-id"))
    with anyio.fail_after(CANCEL_DEADLINE_S):
        deltas += [d async for d in first]
    assert deltas[-1].finished and sum(len(d.new_token_ids) for d in deltas) == long.max_tokens
