"""ToolExecutor: allow-list, argument validation, call caps, timeout, output cap, provenance."""

import asyncio
import threading
import time

import pytest

from heavy.tools.base import Source, ToolContext, ToolError, ToolExecutor, ToolLimits, ToolResult

ECHO_SCHEMA = {
    "type": "object",
    "properties": {"text": {"type": "string", "maxLength": 50}, "times": {"type": "integer", "minimum": 1}},
    "required": ["text"],
    "additionalProperties": False,
}


class EchoTool:
    name = "echo"
    description = "Repeat the text."
    parameters = ECHO_SCHEMA

    async def run(self, args, ctx):
        text = args["text"] * args.get("times", 1)
        source = Source(url=f"http://example.test/{args['text']}", title="t", fetched_at=1.0, content_hash="h")
        return ToolResult(text=text, sources=(source,))


class SlowTool:
    name = "slow"
    description = "Sleeps."
    parameters = {"type": "object", "properties": {}}

    async def run(self, args, ctx):
        await asyncio.sleep(30)
        return ToolResult(text="never")


class FailingTool:
    name = "failing"
    description = "Raises."
    parameters = {"type": "object", "properties": {"expected": {"type": "boolean"}}}

    async def run(self, args, ctx):
        if args.get("expected"):
            raise ToolError("the page could not be read")
        raise RuntimeError("bug")


def ctx(allowed=("echo", "slow", "failing"), job="job-1", deadline=None):
    return ToolContext(job_id=job, trajectory=0, allowed_tools=frozenset(allowed), deadline=deadline)


def executor(**limits):
    return ToolExecutor([EchoTool(), SlowTool(), FailingTool()], ToolLimits(**limits))


def call(ex, name, args, context=None):
    return asyncio.run(ex.call(name, args, context or ctx()))


def test_specs_are_openai_functions_for_allowed_tools_only():
    specs = executor().specs({"echo"})
    assert specs == [{"type": "function", "function": {
        "name": "echo", "description": "Repeat the text.", "parameters": ECHO_SCHEMA}}]
    assert [s["function"]["name"] for s in executor().specs()] == ["echo", "slow", "failing"]


def test_tool_outside_allow_list_is_refused_without_running():
    ex = executor()
    result = call(ex, "echo", {"text": "x"}, ctx(allowed=("slow",)))
    assert result.error is not None and "not available" in result.error and "slow" in result.error
    assert ex.calls_made("job-1", "echo") == 0
    assert ex.records("job-1")[0].error == result.error


def test_unknown_tool_is_refused():
    assert "not available" in call(executor(), "rm_rf", {}, ctx(allowed=("rm_rf",))).error


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({}, "missing required argument 'text'"),
        ({"text": 3}, "argument 'text' must be of type string"),
        ({"text": "a", "extra": 1}, "unknown argument 'extra'"),
        ({"text": "a", "times": 0}, "argument 'times' must be >= 1"),
        ({"text": "a", "times": True}, "argument 'times' must be of type integer"),
        ({"text": "a" * 51}, "at most 50 characters"),
        ("not a dict", "arguments must be of type object"),
    ],
)
def test_invalid_arguments_give_a_clear_error(args, message):
    result = call(executor(), "echo", args)
    assert result.error is not None and message in result.error
    assert result.text.startswith("Error: ")


def test_call_cap_is_per_job_and_per_tool():
    ex = executor(call_caps={"echo": 2})
    assert [call(ex, "echo", {"text": "a"}).error for _ in range(2)] == [None, None]
    third = call(ex, "echo", {"text": "a"})
    assert "call limit reached" in third.error
    assert call(ex, "echo", {"text": "a"}, ctx(job="job-2")).error is None
    assert ex.calls_made("job-1", "echo") == 2


def test_a_jobs_call_cap_grows_with_its_trajectories():
    ex = executor(call_caps={"echo": 2})
    eight = ToolContext(job_id="job-8", trajectory=3, allowed_tools=frozenset({"echo"}), trajectories=8)
    assert [call(ex, "echo", {"text": "a"}, eight).error for _ in range(16)] == [None] * 16
    assert "(16 per job)" in call(ex, "echo", {"text": "a"}, eight).error  # shared: one trajectory may use it all


def test_call_cap_holds_under_concurrent_threads():
    ex = executor(call_caps={"echo": 5})
    errors = []

    def worker():
        errors.extend(call(ex, "echo", {"text": "a"}).error for _ in range(4))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors.count(None) == 5
    assert ex.calls_made("job-1", "echo") == 5


def test_timeout_becomes_an_error_result():
    result = call(executor(timeout_s=0.05), "slow", {})
    assert "timed out" in result.error


def test_passed_deadline_refuses_the_call():
    result = call(executor(), "echo", {"text": "a"}, ctx(deadline=time.monotonic() - 1))
    assert "deadline" in result.error


def test_tool_exceptions_become_error_results():
    assert call(executor(), "failing", {"expected": True}).error == "the page could not be read"
    assert "RuntimeError: bug" in call(executor(), "failing", {}).error


def test_output_is_truncated_with_a_note():
    result = call(executor(output_chars=10), "echo", {"text": "abcdefgh", "times": 3})
    assert result.truncated
    assert result.text.startswith("abcdefghab\n[output truncated: showing 10 of 24 characters]")


def test_provenance_is_recorded_per_job_and_forgotten():
    ex = executor()
    call(ex, "echo", {"text": "a"})
    (record,) = ex.records("job-1")
    assert record.tool == "echo" and record.trajectory == 0
    assert record.sources[0].url == "http://example.test/a"
    ex.forget("job-1")
    assert ex.records("job-1") == [] and ex.calls_made("job-1", "echo") == 0


@pytest.mark.parametrize("bad", [{"timeout_s": 0}, {"output_chars": 0}, {"call_caps": {"echo": -1}}])
def test_limits_are_validated(bad):
    with pytest.raises(ValueError):
        ToolLimits(**bad)


def test_duplicate_tool_names_are_rejected():
    with pytest.raises(ValueError, match="two tools"):
        ToolExecutor([EchoTool(), EchoTool()])


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"type": "array"}, "type 'object'"),
        ({"type": "object", "properties": {"x": {"type": "null"}}}, "unsupported type 'null'"),
        ({"type": "object", "properties": {"x": {"type": "string", "pattern": "a+"}}}, "unsupported JSON-schema"),
    ],
)
def test_schemas_the_validator_cannot_enforce_are_rejected_up_front(parameters, message):
    class Odd(EchoTool):
        pass

    Odd.parameters = parameters
    with pytest.raises(ValueError, match=message):
        ToolExecutor([Odd()])

