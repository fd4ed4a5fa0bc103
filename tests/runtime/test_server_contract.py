"""The OpenAI-compatible server against its own /openapi.json, on the tiny model served by uvicorn on loopback: every
route called as a client calls it and the ways one goes wrong. Each response's status must be one the route
documents, its content type one documented for that status, its body valid against that schema."""

import httpx

from runtime.engine import EngineConfig, LLMEngine
from runtime.engine.async_engine import AsyncEngine
from runtime.models.qwen2 import Qwen2ForCausalLM
from tests.openapi_contract import Contract
from tests.runtime.test_server import MODEL_NAME, PROMPT, TINY, USER, CharTokenizer, running_server, server

__all__ = ["server"]  # the module's server, for the tests below

SHORT = {"max_tokens": 4, "temperature": 0}
CALLS = [  # (route, body, status)
    ("/v1/completions", {"prompt": PROMPT, **SHORT}, 200),
    ("/v1/completions", {"prompt": PROMPT, **SHORT, "stream": True}, 200),
    ("/v1/completions", {"prompt": PROMPT, "max_tokens": -1}, 400),
    ("/v1/completions", {"prompt": PROMPT, "colour": "red", "n": "many"}, 400),
    ("/v1/completions", {"prompt": PROMPT, "model": "other"}, 404),
    ("/v1/chat/completions", {"messages": USER, **SHORT}, 200),
    ("/v1/chat/completions", {"messages": USER, **SHORT, "stream": True}, 200),
    ("/v1/chat/completions", {"messages": []}, 400),
    ("/v1/chat/completions", {"messages": USER, "model": "other"}, 404),
    ("/tokenize", {"prompt": PROMPT}, 200),
    ("/tokenize", {"messages": USER}, 200),
    ("/tokenize", {}, 400),
    ("/tokenize", {"prompt": PROMPT, "model": "other"}, 404),
    ("/detokenize", {"tokens": [1, 2, 3]}, 200),
    ("/detokenize", {"tokens": [10**9]}, 400),
    ("/detokenize", {"tokens": "abc"}, 400),
    ("/detokenize", {"tokens": [1], "model": "other"}, 404),
]


def test_every_route_answers_as_documented(server):
    with httpx.Client(base_url=server[0], timeout=60) as client:
        contract = Contract(client.get("/openapi.json").json())
        for path in ("/health", "/ready", "/metrics", "/v1/models"):
            assert contract.check("GET", path, client.get(path)).status_code == 200, path
        for route, body, status in CALLS:
            response = contract.check("POST", route, client.post(route, json={"model": MODEL_NAME, **body}))
            assert response.status_code == status, (route, body, response.text[:200])
        for route in ("/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"):
            for malformed in (b'{"prompt": ', b'{"prompt": "caf\xe9"}'):  # cut short; no UTF-8
                response = client.post(route, content=malformed, headers={"Content-Type": "application/json"})
                assert contract.check("POST", route, response).status_code == 400, (route, malformed)
        for method, path, status in [("GET", "/v1/nope", 404), ("GET", "/v1/chat/completions", 405)]:
            response = client.request(method, path)  # no route of the spec: OpenAI's error shape all the same
            assert response.status_code == status and response.json()["error"]["type"] == "invalid_request_error"
    assert {(method, path) for method, path, _ in contract.seen} == contract.operations()
    assert not contract.unseen_success_media()


def test_a_stopped_engines_health_answers_as_documented():
    config = EngineConfig(block_size=4, num_blocks=16, max_model_len=64, max_num_seqs=1, max_num_batched_tokens=64)
    engine = AsyncEngine(LLMEngine(Qwen2ForCausalLM(TINY).eval(), CharTokenizer(), config))
    engine.shutdown()
    with running_server(engine, MODEL_NAME) as url, httpx.Client(base_url=url, timeout=60) as client:
        contract = Contract(client.get("/openapi.json").json())
        for path in ("/health", "/ready"):
            assert contract.check("GET", path, client.get(path)).status_code == 503, path
