"""The runtime backend's own logic over a stand-in engine: chat rendering, parsing, usage, cancellation, and
the parsed stream (reasoning, whole tool calls where their text closes, finish reason and usage).
(The real engine and model run in test_e2e.py, marked slow.)"""

import asyncio
from dataclasses import dataclass, field

import pytest

from heavy.llm.adjusted import with_priority
from heavy.llm.runtime_backend import RuntimeBackend, template_messages
from heavy.llm.types import ContextLengthError, LLMError, Sampling, ToolCall
from runtime.engine import PromptTooLong
from tests.heavy.fakes import CountingLimiter

pytestmark = pytest.mark.anyio


@dataclass
class Output:
    new_text: str
    finished: bool = False
    finish_reason: str | None = None
    num_prompt_tokens: int = 40
    num_cached_tokens: int = 16
    num_completion_tokens: int = 0
    new_logprobs: list = field(default_factory=list)


class Engine:
    def __init__(self, pieces, hang=False, finish_reason="stop"):
        self.pieces, self.hang, self.finish_reason = pieces, hang, finish_reason
        self.calls, self.closed = [], []

    async def generate(self, prompt, params, request_id):
        self.calls.append((prompt, params, request_id))
        try:
            for i, piece in enumerate(self.pieces):
                last = i == len(self.pieces) - 1 and not self.hang
                yield Output(piece, finished=last, finish_reason=self.finish_reason if last else None,
                             num_completion_tokens=i + 1)
            if self.hang:  # a request that never ends on its own
                await asyncio.sleep(30)
        finally:
            self.closed.append(request_id)


class Tokenizer:
    def __init__(self):
        self.seen = []

    def encode_chat(self, messages, tools):
        self.seen.append((messages, tools))
        return [1, 2, 3]

    def decode(self, ids):
        return "".join({7: "Yes", 8: "No", 9: " yes"}[i] for i in ids)


async def test_fenced_json_reply_becomes_a_tool_call_with_usage():
    engine = Engine(["```json\n{\"name\": \"search\", ", "\"arguments\": {\"query\": \"ed wood\"}}\n```"])
    backend = RuntimeBackend(engine, Tokenizer())
    completion = await backend.chat([{"role": "user", "content": "q"}], [{"type": "function"}],
                                    Sampling(temperature=0.4, seed=9), max_tokens=64, request_id="job:0:0")
    assert [(c.name, c.arguments) for c in completion.tool_calls] == [("search", {"query": "ed wood"})]
    assert completion.finish_reason == "tool_calls"
    assert (completion.usage.prompt_tokens, completion.usage.cached_prompt_tokens,
            completion.usage.completion_tokens) == (40, 16, 2)
    prompt, params, request_id = engine.calls[0]
    assert (params.temperature, params.seed, params.max_tokens) == (0.4, 9, 64)
    assert request_id.startswith("job:0:0#")


def test_assistant_tool_call_arguments_are_objects_for_the_template():
    messages = [{"role": "assistant", "content": "", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "search", "arguments": "{\"query\": \"x\"}"}}]}]
    assert template_messages(messages)[0]["tool_calls"][0]["function"]["arguments"] == {"query": "x"}
    assert messages[0]["tool_calls"][0]["function"]["arguments"] == "{\"query\": \"x\"}"  # input untouched


async def test_cancelling_the_caller_closes_the_engine_request():
    engine = Engine(["thinking"], hang=True)
    backend = RuntimeBackend(engine, Tokenizer())
    task = asyncio.create_task(backend.chat([{"role": "user", "content": "q"}], None, Sampling(), max_tokens=8))
    while not engine.calls:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.closed == [engine.calls[0][2]]


async def test_a_stream_closed_early_aborts_the_engine_request_and_frees_its_slot_at_once():
    engine, limiter = Engine(["Par", "is"], hang=True), CountingLimiter()
    backend = RuntimeBackend(engine, Tokenizer(), limiter=limiter)
    deltas = backend.stream([{"role": "user", "content": "q"}], None, Sampling(), max_tokens=8)
    await anext(deltas)
    assert limiter.held == 1 and not engine.closed
    await deltas.aclose()
    assert engine.closed == [engine.calls[0][2]] and limiter.held == 0


async def test_engine_refusal_is_an_llm_error():
    class Refusing(Engine):
        async def generate(self, prompt, params, request_id):
            raise PromptTooLong(9000, 8192)
            yield  # pragma: no cover

    with pytest.raises(LLMError, match="runtime: the prompt has 9000 tokens") as refused:
        await RuntimeBackend(Refusing([]), Tokenizer()).chat([], None, Sampling(), max_tokens=8)
    # a prompt past the context: what it counted, for the trajectory to fit the prompt again
    assert isinstance(refused.value, ContextLengthError) and refused.value.prompt_tokens == 3


async def stream_and_chat(pieces, **engine_options):
    messages, tools = [{"role": "user", "content": "q"}], [{"type": "function"}]
    backend = RuntimeBackend(Engine(pieces, **engine_options), Tokenizer())
    deltas = [d async for d in backend.stream(messages, tools, Sampling(), max_tokens=64)]
    backend = RuntimeBackend(Engine(pieces, **engine_options), Tokenizer())
    return deltas, await backend.chat(messages, tools, Sampling(), max_tokens=64)


async def test_stream_emits_each_tool_call_whole_where_its_text_closes():
    pieces = ["<think>need ", "facts</think>\n", "Searching. ", "```json\n{\"name\": \"search\", ",
              "\"arguments\": {\"query\": \"ed wood\"}}\n```", " Then I answer."]
    deltas, completion = await stream_and_chat(pieces)
    with_calls = [i for i, d in enumerate(deltas) if d.tool_calls]
    assert len(with_calls) == 1 and deltas[with_calls[0]].finish_reason is None  # before the stream ends
    assert deltas[with_calls[0]].tool_calls == (ToolCall("call_0", "search", {"query": "ed wood"}),)
    content = "".join(d.content for d in deltas)
    assert "```" not in content and "search" not in content
    assert "".join(d.reasoning for d in deltas) == "need facts" == completion.reasoning
    assert content.strip() == completion.content == "Searching.  Then I answer."
    assert deltas[with_calls[0]].tool_calls == completion.tool_calls  # chat() reads the same calls
    last = deltas[-1]
    assert last.finish_reason == "tool_calls" == completion.finish_reason
    assert (last.usage.prompt_tokens, last.usage.cached_prompt_tokens, last.usage.completion_tokens) == (40, 16, 6)
    assert all(d.usage is None and d.finish_reason is None for d in deltas[:-1])


async def test_stream_flushes_a_call_left_open_at_the_token_limit_on_the_last_delta():
    pieces = ["<tool_call>\n{\"name\": \"search\", ", "\"arguments\": {\"query\": \"kimi\"}}"]
    deltas, completion = await stream_and_chat(pieces, finish_reason="length")
    assert [d.tool_calls for d in deltas if d.tool_calls] == [(ToolCall("call_0", "search", {"query": "kimi"}),)]
    assert deltas[-1].tool_calls and deltas[-1].finish_reason == "length" == completion.finish_reason
    assert not "".join(d.content for d in deltas) and completion.tool_calls == deltas[-1].tool_calls


async def test_asked_alternatives_come_back_per_token_as_text_and_log_probability():
    from runtime.sampling import TokenLogprobs

    class Alternatives(Engine):
        async def generate(self, prompt, params, request_id):
            self.calls.append((prompt, params, request_id))
            yield Output("Yes", new_logprobs=[TokenLogprobs(-0.2, ((7, -0.2), (8, -1.8), (9, -3.0)))])
            yield Output(".", finished=True, finish_reason="stop", new_logprobs=[TokenLogprobs(-0.1, ((9, -0.1),))])

    engine = Alternatives([])
    completion = await RuntimeBackend(engine, Tokenizer()).chat(
        [{"role": "user", "content": "q"}], None, Sampling(top_logprobs=3), max_tokens=2)
    assert engine.calls[0][1].logprobs == 3
    assert completion.content == "Yes."
    assert completion.top_logprobs == ((("Yes", -0.2), ("No", -1.8), (" yes", -3.0)), ((" yes", -0.1),))
    plain = Engine(["Yes"])
    assert (await RuntimeBackend(plain, Tokenizer()).chat([{"role": "user", "content": "q"}], None, Sampling(),
                                                          max_tokens=2)).top_logprobs == ()
    assert plain.calls[0][1].logprobs is None


async def test_a_jobs_priority_reaches_the_engine_request():
    engine = Engine(["done"])
    await with_priority(RuntimeBackend(engine, Tokenizer()), -2).chat(
        [{"role": "user", "content": "q"}], None, Sampling(temperature=0.3, seed=4), max_tokens=8)
    (_, params, _), = engine.calls
    assert (params.priority, params.temperature, params.seed) == (-2, 0.3, 4)  # the rest of its sampling kept
