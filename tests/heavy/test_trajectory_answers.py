"""What a trajectory takes as its answer, and what it sends back to research or drops: an answer call without an
answer, "nothing was found", an answer with no evidence, one that repeats the question, copies a page's title, the
harness's words or what the code printed, one cut by the token limit; an answer written as a JSON number ("How many
...?" is often answered {"answer": 42}) is an answer."""

import pytest

from heavy.agent import TrajectoryLimits, prompts
from heavy.events import TrajectoryStep
from heavy.llm.types import Completion, ToolCall
from tests.heavy.fakes import STEP_USAGE, call, text
from tests.heavy.test_trajectory import by_step, make

pytestmark = pytest.mark.anyio
QUESTION = "How many years after 1887 was the Eiffel Tower finished?"


async def test_a_forced_answer_written_as_an_answer_call_with_a_number_is_read():
    forced = text('{"name": "answer", "arguments": {"answer": 2, "confidence": 0.9}}')
    trajectory, _, _, _ = make(by_step(call("search", query="eiffel tower"), forced=forced), question=QUESTION,
                               limits=TrajectoryLimits(max_steps=2))
    result = await trajectory.run()
    assert (result.stop_reason, result.answer) == ("max_steps", "2")


async def test_an_answer_call_whose_answer_is_zero_is_taken():
    trajectory, _, _, _ = make(by_step(call("search", query="eiffel tower"), call("answer", answer=0)),
                               question="How many times was the Eiffel Tower moved?")
    result = await trajectory.run()
    assert (result.stop_reason, result.answer) == ("answered", "0")


async def test_an_answer_call_without_an_answer_is_followed_at_once_by_the_forced_answer():
    # seen on HotpotQA: {"confidence": .., "sources": [..]} with the answer left out; told the format, the model
    # copied its "..." step after step until no progress ended it (49 of 252 trajectories of the fresh runs)
    trajectory, backend, _, sink = make(by_step(call("search", query="eiffel"), call("answer", sources=["x"]),
                                                call("search", query="never reached")))
    result = await trajectory.run()
    assert (result.answer, result.stop_reason, len(result.steps)) == ("1889", "answered", 2)
    assert result.confidence == 0.3 and [s.url for s in result.cited] == ["http://corpus/eiffel"]
    forced = backend.requests[-1]
    assert forced.forced and [m["role"] for m in forced.messages[-2:]] == ["tool", "user"]
    assert forced.messages[-2]["content"] == prompts.ANSWER_UNSAID
    assert [e.action for e in sink.of_type(TrajectoryStep)][-1] == "forced_answer"


async def test_when_the_forced_answer_says_nothing_empty_and_copied_answers_get_the_format():
    # seen in `heavy ask`: the answer tool's own description, "The final answer, short and direct.", as the answer;
    # on HotpotQA, the search results' footer: "Open a web page with open_page(url) to read it before citing it."
    copied = str(prompts.ANSWER_SPEC["function"]["parameters"]["properties"]["answer"]["description"])
    footer = "Open a web page with open_page(url) to read it before citing it."
    trajectory, backend, _, _ = make(by_step(call("search", query="eiffel"), call("answer", sources=["x"]),
                                             call("answer", answer="..."), call("answer", answer=copied.lower()),
                                             call("answer", answer=footer), call("answer", answer="1889"),
                                             forced=text("...")),
                                     limits=TrajectoryLimits(max_steps=8, no_progress_steps=8))
    result = await trajectory.run()
    assert result.answer == "1889" and len(result.steps) == 6
    assert sum(r.forced for r in backend.requests) == 1  # asked once, after the first empty call
    told = [m["content"] for m in backend.requests[-1].messages if m["role"] == "user"]
    assert sum(t == prompts.EMPTY_ANSWER for t in told) == 3


async def test_an_answer_saying_nothing_was_found_sends_the_model_back_to_research():
    # seen in `heavy ask`: two of eight trajectories answered "No answer found.", listed as an answer in the report
    trajectory, backend, search, _ = make(by_step(call("search", query="louvre"),
                                                  call("answer", answer="No answer found."),
                                                  call("search", query="eiffel"), call("answer", answer="1889")))
    result = await trajectory.run()
    assert (result.answer, result.stop_reason) == ("1889", "answered") and search.queries == ["louvre", "eiffel"]
    assert any(m.get("content") == prompts.NOTHING_FOUND_YET for m in backend.requests[2].messages)
    hedged = "I could not find the month, but the tower was finished in 1889."  # a hedge with an answer is an answer
    trajectory, _, _, _ = make(by_step(call("search", query="eiffel"), call("answer", answer=hedged)))
    assert (await trajectory.run()).answer == hedged


async def test_a_forced_answer_saying_nothing_was_found_is_no_answer():
    queries = iter(["louvre", "paris", "museum"])
    trajectory, _, _, _ = make(lambda r: text("I could not find the answer.") if r.forced
                               else call("search", query=next(queries)), limits=TrajectoryLimits(max_steps=3))
    result = await trajectory.run()
    assert result.stop_reason == "max_steps" and result.answer == "" and not result.answered


async def test_answer_without_evidence_is_sent_back_once():
    trajectory, _, search, _ = make(by_step(call("answer", answer="1887"), call("search", query="eiffel"),
                                            call("answer", answer="1889")))
    result = await trajectory.run()
    assert search.queries == ["eiffel"] and result.answer == "1889" and len(result.steps) == 3


async def test_tool_result_headers_copied_into_the_answer_are_cut_and_their_url_cites_the_page():
    copied = "[1] Eiffel Tower\nURL: http://corpus/eiffel\n… The Eiffel Tower is in Paris and was finished in 1889."
    trajectory, _, _, _ = make(by_step(call("search", query="eiffel tower"), call("answer", answer=copied)))
    result = await trajectory.run()
    assert result.answer == "The Eiffel Tower is in Paris and was finished in 1889."
    assert [s.url for s in result.cited] == ["http://corpus/eiffel"]


async def test_an_answer_that_only_repeats_the_question_is_sent_back():
    trajectory, backend, _, _ = make(by_step(
        call("search", query="eiffel tower"),
        call("answer", answer="When was the Eiffel Tower finished?"),
        call("answer", answer="1889", sources=["http://corpus/eiffel"]),
    ))
    result = await trajectory.run()
    assert (result.answer, result.stop_reason) == ("1889", "answered")
    assert any(m.get("content") == prompts.ANSWER_REPEATS_QUESTION for m in backend.requests[2].messages)


async def test_an_answer_call_cut_by_the_token_limit_keeps_its_finished_sentences():
    cut = Completion(content='{"name": "answer", "arguments": {"answer": "The Eiffel Tower is in Paris and was '
                             'finished in 1889. It was the tallest buil', finish_reason="length")
    trajectory, _, _, _ = make(by_step(call("search", query="eiffel tower"), cut))
    result = await trajectory.run()
    assert (result.answer, result.stop_reason) == ("The Eiffel Tower is in Paris and was finished in 1889.", "answered")
    forced = Completion(content="The Eiffel Tower is in Paris and was finished in 1889. It was the tallest",
                        finish_reason="length")
    trajectory, _, _, _ = make(by_step(call("search", query="eiffel tower"), forced=forced),
                               limits=TrajectoryLimits(max_steps=2))
    result = await trajectory.run()
    assert result.answer == "The Eiffel Tower is in Paris and was finished in 1889."
    assert result.stop_reason == "max_steps"


async def test_a_page_title_as_the_answer_to_how_or_why_is_sent_back_once():
    # seen in `heavy ask` on the with statement: three of eight answered "Python reference: Compound statements"
    how = "How was the Eiffel Tower built?"
    told = prompts.ANSWER_IS_A_TITLE.format(question=how)
    trajectory, _, _, _ = make(by_step(call("search", query="eiffel"), call("answer", answer="Eiffel."),
                                       call("answer", answer="It was built of iron.")), question=how)
    result = await trajectory.run()
    assert result.answer == "It was built of iron." and [s.feedback for s in result.steps].count(told) == 1
    trajectory, _, _, _ = make(by_step(call("search", query="eiffel"), *[call("answer", answer="eiffel")] * 2),
                               question=how)
    assert (await trajectory.run()).answer == "eiffel"  # insisted on: it stands
    # a name may answer "which" or "how many": a title stands at once
    for question in ("Which page is about the tower?", "How many pages name the tower?"):
        trajectory, _, _, _ = make(by_step(call("search", query="eiffel"), call("answer", answer="eiffel")),
                                   question=question)
        result = await trajectory.run()
        assert result.answer == "eiffel" and not any(s.feedback for s in result.steps if s.feedback == told)
    # a forced answer that is only a title is no answer
    trajectory, _, _, _ = make(by_step(call("search", query="eiffel"), forced=text("Eiffel")), question=how,
                               limits=TrajectoryLimits(max_steps=2))
    assert (await trajectory.run()).answer == ""


async def test_our_own_sentences_and_a_json_wrapper_are_taken_out_of_an_answer():
    # seen in `heavy ask`: "... It returns titles, URLs and short snippets; open a URL to read it." (the search tool's
    # description) and a forced answer written as the call's JSON, cut off: '{"answer": "Python reference: ...\\nURL:'
    copied = "It was finished in 1889. Use different search words if a search did not help."
    trajectory, _, _, _ = make(by_step(call("search", query="eiffel"), call("answer", answer=copied)))
    assert (await trajectory.run()).answer == "It was finished in 1889."
    wrapped = text('{"answer": "The Eiffel Tower was finished in 1889.\\nURL: http://corpus/eiffel\\n***')
    trajectory, _, _, _ = make(by_step(call("search", query="eiffel"), forced=wrapped),
                               limits=TrajectoryLimits(max_steps=2))
    assert (await trajectory.run()).answer == "The Eiffel Tower was finished in 1889"


async def test_an_answer_that_only_says_what_the_code_printed_is_sent_back_once():
    # seen in `heavy ask` on the with statement: two trajectories answered "Hello, world!" after trying a snippet
    told = prompts.ANSWER_IS_OUTPUT.format(question="When was the Eiffel Tower finished?")
    trajectory, backend, _, _ = make(by_step(call("search", query="eiffel"), call("python", code="Hello, world!"),
                                             call("answer", answer="Hello, world!"), call("answer", answer="1889")),
                                     allowed=("search", "python"))
    result = await trajectory.run()
    assert result.answer == "1889" and [s.feedback for s in result.steps].count(told) == 1
    # a printed number may be the computed answer; and an answer the model insists on stands
    trajectory, _, _, _ = make(by_step(call("search", query="eiffel"), call("python", code="1889"),
                                       call("answer", answer="It was 1889.")), allowed=("search", "python"))
    assert (await trajectory.run()).answer == "It was 1889."
    trajectory, _, _, _ = make(by_step(call("search", query="eiffel"), call("python", code="Hello, world!"),
                                       *[call("answer", answer="The result is 'hello world'.")] * 2),
                               allowed=("search", "python"))
    result = await trajectory.run()
    assert result.answer == "The result is 'hello world'." and [s.feedback for s in result.steps].count(told) == 1
    # the code run in the same step as the answer, before it
    both = Completion(content="", tool_calls=(ToolCall(id="c_py", name="python", arguments={"code": "Hello"}),
                                              ToolCall(id="c_an", name="answer", arguments={"answer": "Hello"})),
                      finish_reason="tool_calls", usage=STEP_USAGE)
    trajectory, _, _, _ = make(by_step(call("search", query="eiffel"), both, call("answer", answer="1889")),
                               allowed=("search", "python"))
    result = await trajectory.run()
    assert result.answer == "1889" and [s.feedback for s in result.steps].count(told) == 1


async def test_an_answer_copying_what_the_harness_wrote_is_no_answer():
    # seen on HotpotQA: "This run may open only its own corpus pages." (a refused fetch's error) as an answer; here
    # the feedback on a call to a tool the job does not have
    trajectory, backend, _, _ = make(by_step(call("search", query="eiffel"), call("python", code="1"),
                                             call("answer", answer="There is no tool named python."),
                                             call("answer", answer="1889")),
                                     limits=TrajectoryLimits(max_steps=8, no_progress_steps=8))
    result = await trajectory.run()
    assert (result.answer, len(result.steps)) == ("1889", 3)  # the forced answer's, asked for at once
    assert backend.requests[-1].forced and backend.requests[-1].messages[-2]["content"] == prompts.ANSWER_UNSAID
