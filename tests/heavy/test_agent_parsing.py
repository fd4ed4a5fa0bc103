"""Tolerant tool-call parsing, call repair, and context fitting — the weak-model defences of the agent."""

import pytest

from heavy.agent.context import DROPPED, estimate_tokens, fit_context
from heavy.agent.prompts import ANSWER_SPEC
from heavy.agent.repair import repair_call
from heavy.agent.steps import answer_line, restates_question, without_cut_sentence, without_result_headers
from heavy.llm import toolparse
from heavy.llm.openai_wire import parse_completion
from heavy.llm.toolparse import parse_text_tool_calls
from heavy.llm.types import ToolCall

SEARCH = {"type": "function", "function": {"name": "search", "parameters": {
    "type": "object", "properties": {"query": {"type": "string"}, "k": {"type": "integer"}}, "required": ["query"]}}}
OPEN = {"type": "function", "function": {"name": "open_page", "parameters": {
    "type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"]}}}
SPECS = [SEARCH, OPEN, ANSWER_SPEC]


@pytest.mark.parametrize("text", [
    'Let me look.\n<tool_call>\n{"name": "search", "arguments": {"query": "ed wood"}}\n</tool_call>',
    'Let me look.\n```json\n{"name": "search", "arguments": {"query": "ed wood"}}\n```',
    'Let me look. {"name": "search", "arguments": "{\\"query\\": \\"ed wood\\"}"}',
    "Let me look.\n```\n{'name': 'search', 'parameters': {'query': 'ed wood'}}\n```",
])
def test_text_tool_calls_in_every_seen_form(text):
    content, calls = parse_text_tool_calls(text)
    assert content == "Let me look."
    assert [(c.name, c.arguments) for c in calls] == [("search", {"query": "ed wood"})]


def test_a_schema_copied_back_is_a_call_without_arguments():
    echo = '{"name": "search", "description": "Search.", "parameters": {"type": "object", "properties": {}}}'
    assert [(c.name, c.arguments) for c in parse_text_tool_calls(echo)[1]] == [("search", {})]


@pytest.mark.parametrize("text, arguments", [
    ('{"name": "answer", "arguments": {"answer": "Chief of Protocol", "confidence": 0.9, "sources": ["http://a/1", '
     '"http://a/', {"answer": "Chief of Protocol", "confidence": 0.9, "sources": ["http://a/1", "http://a/"]}),
    ('<tool_call>\n{"name": "answer", "arguments": {"answer": "Yes, both were Amer',
     {"answer": "Yes, both were Amer"}),
    ('Let me search. {"name": "search", "arguments": {"query": "Ed Wood nationality"}, "confid',
     {"query": "Ed Wood nationality"}),
    ('{"name": "answer", "arguments": {"answer": "say \\"hi\\', {"answer": 'say "hi\\'}),
])
def test_a_call_cut_off_by_the_token_limit_is_closed_at_its_last_complete_value(text, arguments):
    _, calls = parse_text_tool_calls(text)
    assert [(c.name, c.arguments) for c in calls] == [(calls[0].name, arguments)] and calls[0].name


def test_an_unclosable_fragment_is_not_a_call():
    assert parse_text_tool_calls("I think {the answer is 5") == ("I think {the answer is 5", [])


@pytest.mark.parametrize("text", [
    "```python\n" + "counts = {1, 2}; seen = {}\n" * 300 + "```",  # code: no brace of it starts a JSON object
    '{"x",' * 1500,  # each brace starts one, none closes
])
def test_a_reply_full_of_braces_is_closed_as_a_cut_off_call_only_a_few_times(text, monkeypatch):
    # every closing reads the rest of the reply up to 33 times: one per brace blocked the event loop for seconds
    closings = []
    monkeypatch.setattr(toolparse, "close_truncated", lambda fragment: closings.append(fragment))
    assert parse_text_tool_calls(text) == (text, []) and len(closings) <= toolparse._MAX_CLOSINGS


def test_plain_text_is_not_a_call():
    assert parse_text_tool_calls("The answer is 42.") == ("The answer is 42.", [])


@pytest.mark.parametrize(("name", "arguments", "expected"), [
    ("Lucy Saunders", {"query": "Lucy Saunders"}, ("search", {"query": "Lucy Saunders"})),
    ("functions.search", {"query": "x", "description": "a search"}, ("search", {"query": "x"})),
    ("search", {"query": {"description": "the words", "value": "x"}}, ("search", {"query": "x"})),
    ("", {"url": "http://a/b"}, ("open_page", {"url": "http://a/b"})),
    ("answer", {"final_answer": "42"}, ("answer", {"answer": "42"})),
    ("", {"answer": "1889", "url": "http://a/b", "confidence": 0.9},
     ("answer", {"answer": "1889", "confidence": 0.9})),
])
def test_repair_maps_sloppy_calls_onto_offered_tools(name, arguments, expected):
    fixed = repair_call(ToolCall(id="1", name=name, arguments=arguments), SPECS)
    assert (fixed.name, fixed.arguments) == expected


def test_repair_never_invents_a_tool_that_was_not_offered():
    assert repair_call(ToolCall(id="1", name="python", arguments={"code": "1"}), SPECS) == "unknown tool 'python'"
    assert repair_call(ToolCall(id="1", name="Paris", arguments={"city": "x"}), SPECS) == "unknown tool 'Paris'"
    assert repair_call(ToolCall(id="1", name="", arguments={"city": "x"}), SPECS) == "unreadable call"


def test_a_null_tool_name_from_an_openai_server_is_an_unknown_tool():
    payload = {"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": None, "arguments": '{"city": "x"}'}}]}}]}
    call, = parse_completion(payload).tool_calls
    assert repair_call(call, SPECS) == "unknown tool 'null'"
    named_by_arguments = ToolCall(id="1", name=None, arguments={"query": "ed wood"})
    assert repair_call(named_by_arguments, SPECS).name == "search"


def test_fit_context_drops_the_oldest_tool_outputs_first():
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    for i in range(4):
        messages += [{"role": "assistant", "content": f"step {i}"}, {"role": "tool", "content": str(i) * 3000}]
    fitted = fit_context(messages, None, max_prompt_tokens=2200)
    assert [m["content"] == DROPPED for m in fitted if m["role"] == "tool"] == [True, True, False, False]
    assert estimate_tokens(fitted) <= 2200 and messages[3]["content"] == "0" * 3000  # history untouched


def test_fit_context_drops_older_reasoning_after_the_old_tool_outputs_and_keeps_the_latest():
    messages = [{"role": "user", "content": "q"}]
    for i in range(3):
        messages += [{"role": "assistant", "content": "", "reasoning_content": str(i) * 3000},
                     {"role": "tool", "content": "x" * 300}]
    assert estimate_tokens(messages) > 3000  # reasoning counts
    fitted = fit_context(messages, None, max_prompt_tokens=1500)
    assert [m.get("reasoning_content", "")[:1] for m in fitted if m["role"] == "assistant"] == ["", "", "2"]
    assert [m["content"] == DROPPED for m in fitted if m["role"] == "tool"] == [True, True, False]
    assert estimate_tokens(fitted) <= 1500 and messages[1]["reasoning_content"] == "0" * 3000  # history untouched


def test_fit_context_leaves_a_call_turn_whose_reasoning_goes_a_stand_in_for_it():
    # Moonshot refuses an assistant turn with tool calls and no reasoning_content (400) when thinking is on
    messages = [{"role": "user", "content": "q"}]
    for i in range(3):
        call = {"id": f"c{i}", "type": "function", "function": {"name": "search", "arguments": "{}"}}
        messages += [{"role": "assistant", "content": "", "reasoning_content": str(i) * 3000, "tool_calls": [call]},
                     {"role": "tool", "tool_call_id": f"c{i}", "content": "x" * 300}]
    fitted = fit_context(messages, None, max_prompt_tokens=1500)
    assert estimate_tokens(fitted) <= 1500 and fitted[-2]["reasoning_content"] == "2" * 3000
    assert all(m.get("reasoning_content") for m in fitted if m.get("tool_calls"))


def test_fit_context_cuts_the_newest_output_when_it_alone_is_too_long():
    messages = [{"role": "user", "content": "q"}, {"role": "tool", "content": "x" * 30_000}]
    fitted = fit_context(messages, None, max_prompt_tokens=1000)
    assert estimate_tokens(fitted) <= 1000 and fitted[1]["content"].endswith("[cut to fit the context]")


def test_fit_context_drops_whole_oldest_steps_when_their_calls_alone_overflow():
    # a long run (the step budget goes up to 300): every step's call and its dropped output still take room
    messages = [{"role": "system", "content": "s" * 600}, {"role": "user", "content": "Question: q"}]
    for i in range(120):
        call = {"id": f"c{i}", "type": "function", "function": {"name": "search", "arguments": f'{{"query": "q{i}"}}'}}
        messages += [{"role": "assistant", "content": f"step {i}", "tool_calls": [call]},
                     {"role": "tool", "tool_call_id": f"c{i}", "content": f"results {i} " * 20}]
    fitted = fit_context(messages, None, max_prompt_tokens=2000)
    assert estimate_tokens(fitted) <= 2000 and fitted[:2] == messages[:2] and fitted[-2:] == messages[-2:]
    called = [c["id"] for m in fitted if m["role"] == "assistant" for c in m["tool_calls"]]
    assert called == [m["tool_call_id"] for m in fitted if m["role"] == "tool"]  # each call with its result


class CountedText(str):
    """A message's text that counts how often the estimate reads it (str() of it)."""
    reads = 0

    def __str__(self) -> str:
        self.reads += 1
        return str.__str__(self)


def test_fit_context_reads_each_message_of_a_long_run_a_few_times_not_once_per_output_it_drops():
    """A trajectory of 300 steps: each output dropped was followed by an estimate of the whole prompt again,
    O(steps²) per request and O(steps³) over the trajectory."""
    messages = [{"role": "system", "content": CountedText("s" * 600)}, {"role": "user", "content": "Question: q"}]
    for i in range(300):
        call = {"id": f"c{i}", "type": "function", "function": {"name": "search", "arguments": f'{{"query": "q{i}"}}'}}
        messages += [{"role": "assistant", "content": CountedText(f"step {i}"), "tool_calls": [call]},
                     {"role": "tool", "tool_call_id": f"c{i}", "content": CountedText(f"page {i} " * 1000)}]
    fitted = fit_context(messages, [SEARCH], max_prompt_tokens=8000)
    assert estimate_tokens(fitted, [SEARCH]) <= 8000
    kept = [i for i, m in enumerate(fitted) if m["role"] == "tool" and m["content"] != DROPPED]
    again = [dict(m) for m in fitted]
    again[kept[0] - 2]["content"] = messages[kept[0] - 2]["content"]  # the newest output dropped: it did not fit
    assert estimate_tokens(again, [SEARCH]) > 8000
    assert max(m["content"].reads for m in messages if isinstance(m["content"], CountedText)) <= 3


@pytest.mark.parametrize(("answer", "kept"), [
    ("Python reference: Compound statements\nURL: http://127.0.0.1:41767/doc/22\n… A break ends the loop.",
     "A break ends the loop."),  # seen in the demo: an open_page header without its "# "
    ("# Loops\nURL: http://corpus/loops (moved from http://corpus/old)\n\nA break ends the loop.",
     "A break ends the loop."),
    ("[1] Eiffel\nURL: http://c/1\nFinished in 1889.\n[2] Louvre\nURL: http://c/2\nA museum.",
     "Finished in 1889.\nA museum."),
    ("It is Paris.\nURL: http://corpus/paris", "It is Paris."),  # a sentence is no title: it stays
    ("URL: http://corpus/paris", "URL: http://corpus/paris"),  # nothing but a header: left as it is
    ("Its URL: field is empty.", "Its URL: field is empty."),
])
def test_tool_result_headers_copied_into_an_answer_are_cut(answer, kept):
    assert without_result_headers(answer) == kept
    assert answer_line(answer) == kept.splitlines()[0].rstrip(".")
    assert without_result_headers("...and more") == "...and more"  # no header: not even a leading ellipsis is cut


def test_an_answer_that_says_the_question_back_is_told_apart_from_one_in_the_same_words():
    question = "In Python, what does the break statement do inside a loop?"
    assert restates_question(question, question)  # seen in the demo, word for word
    assert restates_question("what does the break statement do inside a loop?", question)
    assert not restates_question("It ends the loop inside which the break statement runs.", question)
    yes_no = "Were Scott Derrickson and Ed Wood of the same nationality?"
    assert not restates_question("Scott Derrickson and Ed Wood were of the same nationality.", yes_no)
    assert not restates_question("Yes", yes_no) and not restates_question("", yes_no)


def test_an_answer_cut_by_the_token_limit_loses_its_unfinished_sentence():
    cut = 'A "break" statement in the first suite terminates the loop without executing the "else" suite. A "con'
    assert without_cut_sentence(cut) == cut[: cut.index(' A "con')]
    finished = "The tower in Paris was finished in 1889 by the company of Gustave Eiffel."
    assert without_cut_sentence(finished) == finished  # it ended as a sentence: nothing was cut from it
    assert without_cut_sentence("Phil Spector") == "Phil Spector"  # no finished sentence to fall back on
    assert without_cut_sentence("He served in the U.S. Army") == "He served in the U.S. Army"  # too little would stay
    # a reply that was not cut keeps an unfinished tail unless it is a stub copied from a page's wrapped line
    assert without_cut_sentence(cut, cut=False) == cut[: cut.index(' A "con')]
    longer = finished + " It was the tallest building in the world"
    assert without_cut_sentence(longer, cut=False) == longer and without_cut_sentence(longer) == finished
