"""The OpenAI-compatible backend over an httpx mock transport (parsing, retries/backoff, rate limit, cancel, priority,
a thinking API's reasoning sent back). Streamed replies: test_llm_openai_stream.py."""

import asyncio
import email.utils
import json
import time

import httpx
import pytest

from heavy.llm.adjusted import with_priority
from heavy.llm.openai_backend import OpenAIBackend
from heavy.llm.openai_wire import parse_completion
from heavy.llm.ratelimit import RateLimiter
from heavy.llm.retry import RetryPolicy
from heavy.llm.types import LLMError, Sampling

pytestmark = pytest.mark.anyio

FAST_RETRY = RetryPolicy(max_retries=3, backoff_s=0.001, backoff_max_s=0.01)
REPLY = {
    "choices": [{
        "finish_reason": "tool_calls",
        "message": {
            "role": "assistant", "content": "", "reasoning_content": "need to search",
            "tool_calls": [{"id": "c1", "type": "function",
                            "function": {"name": "search", "arguments": "{\"query\": \"kimi\"}"}}],
        },
    }],
    "usage": {"prompt_tokens": 50, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 32}},
}


def backend(handler, **kwargs):
    return OpenAIBackend("http://llm.test/v1", "m", api_key="k", transport=httpx.MockTransport(handler),
                         **{"retry": FAST_RETRY, **kwargs})


async def chat(llm, **kwargs):
    return await llm.chat([{"role": "user", "content": "hi"}], None, Sampling(temperature=0.7, seed=5),
                          max_tokens=32, **kwargs)


async def test_request_body_and_parsed_completion():
    seen = []

    def handler(request):
        seen.append((request, json.loads(request.content)))
        return httpx.Response(200, json=REPLY)

    completion = await chat(backend(handler), request_id="job:0:1", prefix_key="job")
    request, body = seen[0]
    assert request.url == "http://llm.test/v1/chat/completions" and request.headers["authorization"] == "Bearer k"
    assert request.headers["x-prefix-key"] == "job" and body["user"] == "job"
    assert (body["temperature"], body["seed"], body["max_tokens"]) == (0.7, 5, 32) and "priority" not in body
    assert completion.tool_calls[0].name == "search" and completion.tool_calls[0].arguments == {"query": "kimi"}
    assert completion.reasoning == "need to search" and completion.finish_reason == "tool_calls"
    assert (completion.usage.prompt_tokens, completion.usage.cached_prompt_tokens) == (50, 32)


async def test_asked_alternatives_are_requested_and_parsed_per_token():
    seen = []
    logprobs = {"content": [
        {"token": "Yes", "logprob": -0.2, "top_logprobs": [{"token": "Yes", "logprob": -0.2},
                                                           {"token": "No", "logprob": -1.8}]},
        {"token": ".", "logprob": -0.1, "top_logprobs": [{"token": ".", "logprob": -0.1}]}]}

    def handler(request):
        seen.append(json.loads(request.content))
        reply = {"choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content": "Yes."},
                              "logprobs": logprobs if seen[-1].get("logprobs") else None}]}
        return httpx.Response(200, json=reply)

    llm = backend(handler)
    completion = await llm.chat([{"role": "user", "content": "hi"}], None, Sampling(top_logprobs=2), max_tokens=2)
    assert (seen[0]["logprobs"], seen[0]["top_logprobs"]) == (True, 2)
    assert completion.top_logprobs == ((("Yes", -0.2), ("No", -1.8)), ((".", -0.1),))
    assert (await chat(llm)).top_logprobs == () and "logprobs" not in seen[1] and "top_logprobs" not in seen[1]


@pytest.mark.parametrize("content", ["<think>\nneed to search first\n</think>\n\nargparse",
                                     "need to search first</think>argparse"])  # the template opened the block
def test_reasoning_a_server_left_in_the_content_is_split_off(content):
    """A thinking model behind a server without a reasoning parser: the answer must not carry its thoughts."""
    completion = parse_completion({"choices": [{"message": {"role": "assistant", "content": content},
                                                "finish_reason": "stop"}]})
    assert (completion.content, completion.reasoning) == ("argparse", "need to search first")
    plain = parse_completion({"choices": [{"message": {"content": "a <think> tag, quoted"}, "finish_reason": "stop"}]})
    assert (plain.content, plain.reasoning) == ("a <think> tag, quoted", "")
    separate = parse_completion({"choices": [{"message": {"content": "</think>x", "reasoning_content": "r"}}]})
    assert (separate.content, separate.reasoning) == ("</think>x", "r")  # the server's own split stands


def test_a_think_block_cut_off_by_the_token_cap_is_reasoning_not_the_answer():
    """A thinking model stopped by max_tokens mid-thought (finish_reason "length"): its thoughts must not come back as
    the answer (a forced final answer reads the content), as the stream's splitter already treats them."""
    cut = parse_completion({"choices": [{"message": {"content": "<think>\nweighing the two pages"},
                                         "finish_reason": "length"}]})
    assert (cut.content, cut.reasoning) == ("", "weighing the two pages")


def test_a_think_tag_quoted_inside_an_answer_does_not_swallow_the_answer():
    """Only a block at the start (or a closing tag alone, the template having opened the block) is reasoning: an
    answer that names the tags keeps its text, as the stream keeps it."""
    text = "Qwen3 wraps its thoughts in <think>...</think> tags before the answer."
    quoted = parse_completion({"choices": [{"message": {"content": text}, "finish_reason": "stop"}]})
    assert (quoted.content, quoted.reasoning) == (text, "")


def test_alternatives_outside_what_servers_give_are_refused():
    with pytest.raises(ValueError, match="top_logprobs"):
        Sampling(top_logprobs=21)


async def test_retries_429_and_5xx_then_succeeds():
    statuses = iter([429, 503, 200])

    def handler(request):
        status = next(statuses)
        return httpx.Response(status, json=REPLY if status == 200 else {"error": "busy"},
                              headers={"retry-after": "0"})

    assert (await chat(backend(handler))).tool_calls


async def test_gives_up_after_the_retry_budget_and_never_retries_a_bad_request():
    calls = []

    def failing(status):
        def handler(request):
            calls.append(status)
            return httpx.Response(status, json={"error": "no"})
        return handler

    with pytest.raises(LLMError, match="giving up after 4 attempts"):
        await chat(backend(failing(500)))
    with pytest.raises(LLMError, match="HTTP 400"):
        await chat(backend(failing(400)))
    assert calls == [500] * 4 + [400]


@pytest.mark.parametrize("response", [
    httpx.Response(200, text="<html>upstream gateway</html>"),
    httpx.Response(200, json={"choices": [{"message": {"content": "", "tool_calls": [{"id": "c1"}]}}]}),
    httpx.Response(200, json={**REPLY, "usage": {"prompt_tokens": "many"}}),
])
async def test_a_malformed_reply_is_an_llm_error(response):
    # the agent loop keeps a trajectory's evidence and best answer on an LLMError; anything else crashed it
    with pytest.raises(LLMError, match="malformed completion"):
        await chat(backend(lambda request: response))


async def test_connection_errors_are_retried():
    attempts = []

    def handler(request):
        attempts.append(1)
        if len(attempts) < 2:
            raise httpx.ConnectError("refused")
        return httpx.Response(200, json=REPLY)

    assert (await chat(backend(handler))).tool_calls and len(attempts) == 2


async def test_shared_rate_limiter_caps_requests_in_flight():
    in_flight, peak = 0, 0

    async def handler(request):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        return httpx.Response(200, json=REPLY)

    llm = backend(handler, limiter=RateLimiter(requests_per_s=1000, max_concurrency=2))
    await asyncio.gather(*(chat(llm) for _ in range(8)))
    assert peak == 2


async def test_cancelling_the_caller_aborts_the_request():
    started, aborted = asyncio.Event(), asyncio.Event()

    async def handler(request):
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            aborted.set()
            raise
        return httpx.Response(200, json=REPLY)

    task = asyncio.create_task(chat(backend(handler)))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert aborted.is_set()


def test_backoff_grows_and_respects_retry_after():
    policy = RetryPolicy(max_retries=5, backoff_s=1, backoff_max_s=8)
    assert 0.5 <= policy.delay(0, None) <= 1 and 4 <= policy.delay(3, None) <= 8
    assert policy.delay(0, 6.0) == 6.0 and policy.delay(0, 60.0) == 8


@pytest.mark.parametrize("form", ["seconds", "http-date"])
async def test_a_retry_after_in_either_form_is_read(form):
    wait = time.time() + 100
    header = "100" if form == "seconds" else email.utils.formatdate(wait, usegmt=True)
    llm = backend(lambda request: httpx.Response(503, json={"error": "busy"}, headers={"retry-after": header}),
                  retry=RetryPolicy(max_retries=0))
    with pytest.raises(LLMError) as refused:
        await chat(llm)
    assert 90 < refused.value.__cause__.retry_after_s <= 100


async def test_a_jobs_priority_is_sent_only_when_set():
    bodies = []

    def handler(request):
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json=REPLY)

    await chat(with_priority(backend(handler), 3))
    assert bodies[0]["priority"] == 3 and bodies[0]["seed"] == 5


async def test_a_trajectory_over_a_thinking_api_that_wants_reasoning_back_with_every_call():
    """Moonshot's rule for its thinking models: an assistant turn with tool calls must carry its reasoning_content,
    or the request is a 400. The trajectory's own opening search and every call the model made go back with it."""
    from heavy.agent import Trajectory, TrajectoryLimits, TrajectorySpec
    from heavy.tools.base import ToolExecutor
    from tests.heavy.fakes import DictSearch

    def handler(request):
        messages = json.loads(request.content)["messages"]
        for i, message in enumerate(messages):
            if message["role"] == "assistant" and message.get("tool_calls") and not message.get("reasoning_content"):
                error = f"thinking is enabled but reasoning_content is missing in assistant tool call message at {i}"
                return httpx.Response(400, json={"error": {"message": error, "type": "invalid_request_error"}})
        turns = sum(m["role"] == "assistant" for m in messages)
        name, arguments = (("search", {"query": "eiffel tower 1889"}) if turns < 2 else
                           ("answer", {"answer": "1889", "sources": ["http://corpus/eiffel"]}))
        call = {"id": f"functions.{name}:{turns}", "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments)}}
        message = {"role": "assistant", "content": "", "reasoning_content": f"turn {turns}: {name} next",
                   "tool_calls": [call]}
        return httpx.Response(200, json={"choices": [{"finish_reason": "tool_calls", "message": message}],
                                         "usage": {"prompt_tokens": 60, "completion_tokens": 9}})

    pages = {"http://corpus/eiffel": "The Eiffel Tower was finished in 1889."}
    spec = TrajectorySpec(job_id="j", index=0, question="When was the Eiffel Tower finished?",
                          allowed_tools=frozenset({"search"}), sampling=Sampling(),
                          limits=TrajectoryLimits(max_steps=4))
    result = await Trajectory(spec, backend(handler), ToolExecutor([DictSearch(pages)])).run()
    assert (result.answer, result.stop_reason) == ("1889", "answered")
