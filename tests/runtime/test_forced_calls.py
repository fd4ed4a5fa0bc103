"""Forced tool calls on the tiny Kimi K2 checkpoint (random weights, Kimi's tokenizer and call markers): a required or
named tool_choice gets a call that parses and fits the tool's schema, its markers written as special tokens."""

import json

import httpx
import pytest
import torch

from runtime.engine import EngineConfig, LLMEngine
from runtime.engine.async_engine import AsyncEngine
from runtime.engine.factory import load_tokenizer
from runtime.models.registry import load_model
from tests.runtime.test_server import running_server

pytestmark = pytest.mark.slow

FORECAST = {"type": "function", "function": {
    "name": "get_forecast", "description": "Weather forecast for a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "days"],
                   "properties": {"city": {"enum": ["Oslo", "Bergen"]}, "days": {"type": "integer", "minimum": 1,
                                                                               "maximum": 7}}}}}
CLOCK = {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {},
                                                                         "additionalProperties": False}}}


@pytest.fixture(scope="module")
def server(tiny_kimi_path):
    engine = LLMEngine(load_model(tiny_kimi_path, torch.float32), load_tokenizer(tiny_kimi_path),
                       EngineConfig(block_size=16, num_blocks=128, max_model_len=1024))
    with running_server(AsyncEngine(engine), "tiny-kimi") as url:
        yield url


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_forecast"}}])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_random_kimi_model_forced_to_call_writes_a_call_that_fits(server, tool_choice, seed):
    body = {"model": "tiny-kimi", "messages": [{"role": "user", "content": "weather?"}], "tools": [FORECAST, CLOCK],
            "tool_choice": tool_choice, "temperature": 1.0, "seed": seed, "max_tokens": 300}
    choice = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=120).json()["choices"][0]
    assert choice["finish_reason"] == ("tool_calls" if tool_choice == "required" else "stop"), choice  # as OpenAI
    (call,) = choice["message"]["tool_calls"]
    arguments = json.loads(call["function"]["arguments"])
    if call["function"]["name"] == "now":
        assert tool_choice == "required" and arguments == {}
    else:
        assert arguments["city"] in ("Oslo", "Bergen") and 1 <= arguments["days"] <= 7, arguments
