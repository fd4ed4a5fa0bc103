"""Tool calls as OpenAI and vLLM return them, on the tiny model: parallel_tool_calls false ends the answer at its
first call; with no calls to parse, a call the model writes anyway is its raw text; a forced call's opening takes
completion room, not prompt; a named tool_choice finishes with "stop". The tiny model writes calls when a
guided_choice or a forced call's grammar holds it to them."""

import json

import httpx
import pytest

from tests.runtime.test_server import MODEL_NAME, USER, scrape_metrics, server
from tests.runtime.test_server_compat import FIRST_CALL, TOOLS, TWO_CALLS, chat_answer, events, post

__all__ = ["server"]  # the module's server, for the tests below

# one tool whose only arguments are {}: the forced call's grammar leaves the random model nothing to ramble in, and
# its rendering leaves the prompt room in the tiny context
EMPTY_ARGUMENTS = {"type": "object", "properties": {}, "additionalProperties": False}
STRICT_TOOLS = [{"type": "function", "function": {"name": "f", "parameters": EMPTY_ARGUMENTS}}]
NAMED_F = {"type": "function", "function": {"name": "f"}}


def streamed_chat(server, body: dict) -> tuple[str, str, dict]:
    """The joined content, the finish reason and the usage of a streamed chat answer."""
    data = [json.loads(e) for e in events(server, "chat/completions", {
        "messages": USER, "temperature": 0, **body, "stream_options": {"include_usage": True}})[:-1]]
    choices = [c for chunk in data for c in chunk["choices"]]
    content = "".join(c["delta"].get("content") or "" for c in choices)
    return content, [c["finish_reason"] for c in choices if c["finish_reason"]][-1], data[-1]["usage"]


@pytest.mark.parametrize("streamed", [False, True])
def test_parallel_tool_calls_false_ends_the_answer_at_its_first_call(server, streamed):
    """The later calls were generated (and their tokens spent and counted) only to be dropped."""
    body = {"tools": TOOLS, "guided_choice": [TWO_CALLS], "max_tokens": len(TWO_CALLS) + 1,
            "parallel_tool_calls": False}
    assert chat_answer(server, body, streamed) == (["f"], "tool_calls")
    if streamed:
        usage = streamed_chat(server, body)[2]
    else:
        usage = post(server, "chat/completions", {"messages": USER, "temperature": 0, **body}).json()["usage"]
    assert usage["completion_tokens"] == len(FIRST_CALL)  # one character a token: generation stopped at its close


@pytest.mark.parametrize("streamed", [False, True])
def test_an_answer_ended_at_its_first_call_counts_in_the_metrics_as_the_client_got_it(server, streamed):
    """The server stops the engine request itself there: that is not a client gone ("abort")."""
    body = {"tools": TOOLS, "guided_choice": [TWO_CALLS], "max_tokens": len(TWO_CALLS) + 1,
            "parallel_tool_calls": False}
    before = scrape_metrics(server)
    assert chat_answer(server, body, streamed) == (["f"], "tool_calls")
    after = scrape_metrics(server)

    def ended(reason: str) -> float:
        name = f'heavy_runtime_requests_total{{finish_reason="{reason}",model_name="{MODEL_NAME}"}}'
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert (ended("tool_calls"), ended("abort")) == (1, 0)


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("tools", [{"tools": TOOLS, "tool_choice": "none"}, {}])
def test_a_call_the_model_writes_with_no_calls_to_parse_is_its_raw_text(server, tools, streamed):
    """As vLLM: the text the model wrote, tags and all, not the parser's reading of it re-serialised as JSON."""
    body = {**tools, "guided_choice": [TWO_CALLS], "max_tokens": len(TWO_CALLS) + 1}
    if streamed:
        content, finish, _ = streamed_chat(server, body)
    else:
        choice = post(server, "chat/completions", {"messages": USER, "temperature": 0, **body}).json()["choices"][0]
        assert "tool_calls" not in choice["message"]
        content, finish = choice["message"]["content"], choice["finish_reason"]
    assert (content, finish) == (TWO_CALLS, "stop")


@pytest.mark.parametrize("tool_choice", ["required", NAMED_F])
def test_a_forced_calls_opening_takes_completion_room_as_tokenize_counts_it(server, tool_choice):
    """A client sizing max_tokens as max_model_len - /tokenize's count was refused: the opening the server writes
    counted as prompt."""
    counted = httpx.post(f"{server[0]}/tokenize", json={"model": MODEL_NAME, "messages": USER,
                                                        "tools": STRICT_TOOLS}).json()
    room = counted["max_model_len"] - counted["count"]
    body = {"messages": USER, "tools": STRICT_TOOLS, "tool_choice": tool_choice, "temperature": 0}
    reply = post(server, "chat/completions", {**body, "max_tokens": room})
    assert reply.status_code == 200, reply.text
    usage = reply.json()["usage"]
    assert usage["prompt_tokens"] == counted["count"] and usage["completion_tokens"] <= room
    assert post(server, "chat/completions", {**body, "max_tokens": room + 1}).status_code == 400
    too_small = post(server, "chat/completions", {**body, "max_tokens": 3})  # less than the opening itself
    assert too_small.status_code == 400 and too_small.json()["error"]["param"] == "max_tokens"


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("tool_choice, finish", [(NAMED_F, "stop"), ("required", "tool_calls")])
def test_a_named_tool_choice_finishes_with_stop(server, tool_choice, finish, streamed):
    """OpenAI and vLLM: "stop" for a call the client named, "tool_calls" for one the model chose."""
    body = {"tools": STRICT_TOOLS, "tool_choice": tool_choice, "max_tokens": 60}
    names, reason = chat_answer(server, body, streamed)
    assert len(names) == 1 and reason == finish
