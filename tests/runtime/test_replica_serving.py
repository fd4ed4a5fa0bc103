"""The OpenAI-compatible app over the router (what `python -m runtime serve --replicas R --ep E` runs): one EP = 2
replica of the tiny Kimi checkpoint, requests through httpx's ASGI transport."""

import json
import time

import anyio
import httpx
import pytest

from runtime.replica.serving import PrefixKeyMiddleware, start_frontend
from runtime.sampling import SamplingParams
from runtime.server.app import create_app
from tests.runtime.replica_fixtures import ENGINE

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.anyio]

BODY = {"model": "tiny-kimi", "messages": [{"role": "user", "content": "name three prime numbers"}],
        "max_tokens": 6, "temperature": 0}
CANCEL_DEADLINE_S = 30


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


async def test_a_prompt_longer_than_the_context_is_a_400(client):
    long = {"role": "user", "content": "word " * 400}
    response = await client.post("/v1/chat/completions", json=BODY | {"messages": [long]})
    assert response.status_code == 400


async def _answered_health(frontend, deadline: float):
    """The replica's health; on a loaded machine a health call can miss the router's timeout (None): ask again."""
    while (health := (await frontend.router.check_health.remote())[0]) is None:
        assert time.monotonic() < deadline, "the replica never answered a health check"
        await anyio.sleep(0.1)
    return health


async def test_a_client_that_leaves_frees_its_request_on_the_replica(frontend):
    aborted_before = (await _answered_health(frontend, time.monotonic() + CANCEL_DEADLINE_S)).aborted
    stream = frontend.generate([7] * 20, SamplingParams(temperature=0.0, max_tokens=100, ignore_eos=True))
    first = await anext(stream)
    assert first.new_token_ids and not first.finished
    await stream.aclose()  # what the server does when the HTTP client disconnects
    deadline = time.monotonic() + CANCEL_DEADLINE_S
    while True:
        health = await _answered_health(frontend, deadline)
        if health.aborted == aborted_before + 1 and health.in_flight == 0:
            break
        assert time.monotonic() < deadline, f"the abandoned request was not aborted: {health}"
        await anyio.sleep(0.1)
