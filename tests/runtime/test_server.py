"""The OpenAI-compatible server on 127.0.0.1 (health, models, chat completions, metrics), driven by the `openai` client
and httpx, over a tiny random Qwen2; its /v1/completions in test_server_completions.py."""

import asyncio
import json
import threading
import time
from contextlib import contextmanager

import httpx
import openai
import pytest
import torch
import uvicorn

from runtime.engine import EngineConfig, LLMEngine
from runtime.engine.async_engine import AsyncEngine
from runtime.models.qwen2 import Qwen2Config, Qwen2ForCausalLM
from runtime.server.app import create_app
from tests.net import free_port
from tests.runtime.test_engine import LetterTokenizer

TINY = Qwen2Config(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=512)
MODEL_NAME = "tiny"
CONTEXT = 256
USER = [{"role": "user", "content": "hello there, how are you today?"}]


class CharTokenizer(LetterTokenizer):
    """One token per printable ASCII character (ids 1..96 are characters 32..127, both ways), EOS 0; chat =
    role:content; pairs."""

    class Decoder(LetterTokenizer.Decoder):
        def push(self, token_id: int) -> str:
            return chr(31 + token_id) if token_id else ""

    def decode(self, ids):
        return "".join(self.Decoder().push(i) for i in ids)

    vocab_size = TINY.vocab_size

    def token_bytes(self, token_id: int) -> bytes:
        return bytes([31 + token_id]) if token_id else b""

    def is_special(self, token_id: int) -> bool:
        return token_id == 0

    def encode(self, text):
        return [ord(c) - 31 if 32 <= ord(c) < 128 else 1 for c in text]

    def encode_chat(self, messages, tools=None):
        return self.encode("".join(f"{m['role']}:{m['content']};" for m in messages) + json.dumps(tools or []))



@contextmanager
def running_server(engine: AsyncEngine, model_name: str, **app_options):
    """Serve create_app(engine, **app_options) on 127.0.0.1 in a thread; yields the base URL; shuts both down
    after."""
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(create_app(engine, model_name, **app_options), host="127.0.0.1", port=port,
                                       log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
        engine.shutdown()


def tiny_engine() -> AsyncEngine:
    torch.manual_seed(0)
    config = EngineConfig(block_size=4, num_blocks=CONTEXT // 4 * 4, max_model_len=CONTEXT, max_num_seqs=8,
                          max_num_batched_tokens=128)
    return AsyncEngine(LLMEngine(Qwen2ForCausalLM(TINY).eval(), CharTokenizer(), config))


@pytest.fixture(scope="module")
def server():
    engine = tiny_engine()
    with running_server(engine, MODEL_NAME) as url:
        yield url, engine


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0)


def test_health_and_models(server, client):
    assert httpx.get(server[0] + "/health").json() == httpx.get(server[0] + "/ready").json() == {"status": "ok"}
    assert [m.id for m in client.models.list().data] == [MODEL_NAME]
    # as vLLM reports it: the context clients (heavy's openai backend) size their prompts to
    assert httpx.get(server[0] + "/v1/models").json()["data"][0]["max_model_len"] == CONTEXT


def test_health_is_503_with_the_reason_once_the_engine_loop_stopped():
    config = EngineConfig(block_size=4, num_blocks=16, max_model_len=64, max_num_seqs=1, max_num_batched_tokens=64)
    engine = AsyncEngine(LLMEngine(Qwen2ForCausalLM(TINY).eval(), CharTokenizer(), config))
    engine.shutdown()

    async def health() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(engine, MODEL_NAME))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return [await c.get("/health"), await c.get("/ready")]
    for response in asyncio.run(health()):
        assert response.status_code == 503
        assert response.json() == {"status": "unavailable", "reason": "the engine loop has stopped: shutdown"}


def test_streaming_equals_non_streaming_and_usage_counts_cached_tokens(client):
    kwargs = dict(model=MODEL_NAME, messages=USER, temperature=0, max_tokens=10)
    first = client.chat.completions.create(**kwargs)
    second = client.chat.completions.create(**kwargs)
    assert first.choices[0].message.content == second.choices[0].message.content
    assert second.usage.prompt_tokens == first.usage.prompt_tokens
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens // 4 * 4 - 4 > 0
    stream = client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == first.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == first.usage.completion_tokens
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [first.choices[0].finish_reason]


def test_logprobs_and_seeded_sampling(client):
    kwargs = dict(model=MODEL_NAME, messages=USER, temperature=1.0, seed=7, max_tokens=6, logprobs=True,
                  top_logprobs=2)
    a, b = client.chat.completions.create(**kwargs), client.chat.completions.create(**kwargs)
    assert a.choices[0].message.content == b.choices[0].message.content
    entries = a.choices[0].logprobs.content
    assert len(entries) == a.usage.completion_tokens and all(len(e.top_logprobs) == 2 for e in entries)


def test_n_choices_are_each_what_their_seed_gives_alone_streamed_or_not(client):
    kwargs = dict(model=MODEL_NAME, messages=USER, temperature=1.0, max_tokens=8, logprobs=True)
    several = client.chat.completions.create(**kwargs, seed=11, n=3)
    assert [c.index for c in several.choices] == [0, 1, 2]
    alone = [client.chat.completions.create(**kwargs, seed=11 + j).choices[0] for j in range(3)]
    assert [c.message.content for c in several.choices] == [c.message.content for c in alone]
    assert len({c.message.content for c in several.choices}) > 1
    assert all(len(c.logprobs.content) > 0 for c in several.choices)
    single = client.chat.completions.create(**kwargs, seed=11)
    assert several.usage.prompt_tokens == single.usage.prompt_tokens  # the prompt counted once
    assert several.usage.completion_tokens == sum(len(c.logprobs.content) for c in several.choices)
    chunks = list(client.chat.completions.create(**kwargs, seed=11, n=3, stream=True))
    streamed = ["".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == j)
                for j in range(3)]
    assert streamed == [c.message.content for c in several.choices]
    assert all(len(c.choices) == 1 for c in chunks)  # a choice's delta per event


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": []}, "messages"),
        ({"messages": USER, "tool_choice": "sometimes"}, "tool_choice"),
        ({"messages": USER, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"messages": USER, "tool_choice": "required"}, "tool_choice"),  # required, but no tools
        ({"messages": USER, "max_tokens": 0}, "max_tokens"),
        ({"messages": USER, "max_tokens": -3}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x" * (2 * CONTEXT)}]}, "messages"),
        ({"messages": USER, "temperature": -1}, "temperature"),
        ({"messages": USER, "n": 65}, "n"),
        ({"messages": USER, "top_logprobs": 3}, "top_logprobs"),  # without logprobs: true it would be ignored
    ],
)
def test_bad_requests_get_openai_400s_and_the_server_keeps_serving(server, client, body, param):
    response = httpx.post(server[0] + "/v1/chat/completions", json={"model": MODEL_NAME, **body})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL_NAME, **body)
    ok = client.chat.completions.create(model=MODEL_NAME, messages=USER, max_tokens=2)
    assert ok.usage.completion_tokens >= 1


def test_a_model_this_server_does_not_serve_is_404_naming_the_one_it_does(server, client):
    response = httpx.post(server[0] + "/v1/chat/completions", json={"model": "gpt-4o", "messages": USER})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["param"] == "model" and "'gpt-4o'" in error["message"] and f"'{MODEL_NAME}'" in error["message"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=USER, max_tokens=2)
    unnamed = httpx.post(server[0] + "/v1/chat/completions", json={"messages": USER, "max_tokens": 2})
    assert unnamed.status_code == 200 and unnamed.json()["model"] == MODEL_NAME  # no name: the one it serves
    plain = client.chat.completions.create(model=MODEL_NAME, messages=USER, max_tokens=2,
                                           response_format={"type": "text"})
    assert plain.usage.completion_tokens >= 1


def test_concurrent_requests_are_batched_and_cancellation_frees_blocks(server, monkeypatch):
    url, engine = server
    batch_sizes, aborted = [], []
    run, abort = engine.engine.runner.run, engine.engine.abort
    monkeypatch.setattr(engine.engine.runner, "run", lambda s, f: batch_sizes.append(len(s)) or run(s, f))
    monkeypatch.setattr(engine.engine, "abort", lambda rid: aborted.append(rid) or abort(rid))

    async def main():
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as aclient:
            replies = await asyncio.gather(*(
                aclient.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": f"q{i}"}],
                                                temperature=0, max_tokens=8)
                for i in range(6)
            ))
            stream = await aclient.chat.completions.create(model=MODEL_NAME, messages=USER, max_tokens=200,
                                                           stream=True)
            async for _ in stream:
                break  # the client goes away after the first chunk
            await stream.close()
        return replies

    replies = asyncio.run(main())
    assert all(r.usage.completion_tokens >= 1 for r in replies)
    assert max(batch_sizes) > 1  # the six concurrent requests shared steps
    deadline = time.monotonic() + 60
    while engine.engine.has_unfinished() or not aborted:  # the abandoned stream is aborted
        assert time.monotonic() < deadline, "abandoned request never aborted"
        time.sleep(0.05)
    blocks = engine.engine.scheduler.block_manager
    assert blocks.num_free_blocks == len(blocks.blocks)


# --- /v1/completions (its tests: test_server_completions.py) ---

PROMPT = "the quick brown fox"


def complete(server, **body) -> httpx.Response:
    return httpx.post(server[0] + "/v1/completions", json={"model": MODEL_NAME, **body}, timeout=60)


def scrape_metrics(server) -> dict[str, float]:
    """/metrics as {name{labels}: value}."""
    response = httpx.get(server[0] + "/metrics", timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in response.text.splitlines() if line and not line.startswith("#")}


def test_metrics_count_each_requests_tokens_and_times(server):
    before = scrape_metrics(server)
    complete(server, prompt=PROMPT, max_tokens=5, temperature=0, ignore_eos=True)
    after = scrape_metrics(server)
    label = f'{{model_name="{MODEL_NAME}"}}'

    def grew(name: str, labels: str = label) -> float:
        return after[f"heavy_runtime_{name}{labels}"] - before.get(f"heavy_runtime_{name}{labels}", 0.0)

    assert grew("generation_tokens_total") == 5 and grew("prompt_tokens_total") == len(PROMPT)
    assert grew("requests_total", f'{{finish_reason="length",model_name="{MODEL_NAME}"}}') == 1
    for histogram in ("time_to_first_token_seconds", "time_per_output_token_seconds", "e2e_request_latency_seconds"):
        assert grew(f"{histogram}_count") == 1 and grew(f"{histogram}_sum") > 0
    # the engine runs in this process: its queue and cache, idle between requests
    assert after[f"heavy_runtime_num_requests_running{label}"] == 0
    assert after[f"heavy_runtime_requests_in_flight{label}"] == 0
    assert 0 <= after[f"heavy_runtime_kv_cache_usage_ratio{label}"] < 1
