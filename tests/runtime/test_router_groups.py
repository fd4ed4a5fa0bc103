"""One HTTP request's n choices and best_of candidates go to one replica (no Ray cluster: the real app, frontend and
router over stand-in replicas): each choice is an engine request, and spread over replicas each of them prefilled the
prompt, where on one the first prefills it and the others reuse it from its prefix cache."""

import asyncio
from types import SimpleNamespace

import httpx
import pytest

from runtime.engine.factory import load_tokenizer
from runtime.engine.llm_engine import RequestOutput
from runtime.replica import router as router_module
from runtime.replica import serving as serving_module
from runtime.replica.router import Router
from runtime.replica.serving import PrefixKeyMiddleware, RouterFrontend
from runtime.server.app import create_app
from tests.runtime.replica_fixtures import Method

pytestmark = pytest.mark.anyio


class HeldReplica:
    """Records the requests it gets; each answers one token once `expected` requests reached the replicas, so all
    of them are in flight together (as a prompt's prefill is long)."""

    def __init__(self, index: int, arrivals: list[int], all_arrived: asyncio.Event, expected: int):
        async def generate_stream(*args):
            arrivals.append(index)
            if len(arrivals) == expected:
                all_arrived.set()
            await all_arrived.wait()
            yield asyncio.sleep(0, RequestOutput("r", [7], "x", True, "length", 3, 0, 1))  # what awaiting a ref gives
        self.generate_stream = Method(generate_stream)


def routed_by(router: Router) -> SimpleNamespace:
    """The router actor's handle, as the frontend has it: a stream of refs to await."""
    async def generate_stream(*args, **kwargs):
        async for routed in router.generate_stream(*args, **kwargs):
            yield asyncio.sleep(0, routed)
    return SimpleNamespace(generate_stream=Method(generate_stream))


@pytest.mark.parametrize("fan_out", [{"n": 4}, {"n": 1, "best_of": 4}])
async def test_a_requests_choices_go_to_one_replica_and_the_next_request_may_go_elsewhere(fan_out, tiny_kimi_path,
                                                                                        monkeypatch):
    for module in (router_module, serving_module):  # stand-in streams, no refs to cancel
        monkeypatch.setattr(module.ray, "cancel", lambda *args, **kwargs: None)
    arrivals, all_arrived = [], asyncio.Event()
    router = Router([HeldReplica(i, arrivals, all_arrived, expected=4) for i in range(2)])
    frontend = RouterFrontend(routed_by(router), load_tokenizer(tiny_kimi_path), max_model_len=128)
    app = PrefixKeyMiddleware(create_app(frontend, model_name="tiny-kimi"))
    body = {"model": "tiny-kimi", "prompt": "one prompt, prefilled once", "max_tokens": 1} | fan_out
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        reply = await client.post("/v1/completions", json=body)
        assert reply.status_code == 200, reply.text
        assert len(reply.json()["choices"]) == fan_out["n"]
        assert len(set(arrivals)) == 1, arrivals  # all on one replica (they alternated between the two)
        assert router.groups == {}  # forgotten with its last request

        # another request is placed by load: with one held at a replica, the next goes to the other
        arrivals.clear()
        all_arrived.clear()
        pair = {"model": "tiny-kimi", "prompt": "one prompt, prefilled once", "max_tokens": 1, "n": 2}
        held = asyncio.create_task(client.post("/v1/completions", json=pair))
        while len(arrivals) < 2:
            await asyncio.sleep(0.01)
        other = await client.post("/v1/completions", json=pair)
        assert (await held).status_code == other.status_code == 200
        assert arrivals[0] == arrivals[1] != arrivals[2] == arrivals[3], arrivals
