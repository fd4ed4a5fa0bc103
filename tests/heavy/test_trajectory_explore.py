"""A repeated search or page runs something new in its place (heavy/agent/explore.py), against a scripted backend."""

import pytest

from heavy.agent import Trajectory, TrajectoryLimits, TrajectorySpec, prompts
from heavy.agent.explore import call_signature, unexplored_call
from heavy.events import MemorySink, ToolCallEvent, ToolResultEvent
from heavy.llm.types import Completion, Sampling, ToolCall
from heavy.tools.base import ToolExecutor
from tests.heavy.fakes import DictOpen, DictSearch, ScriptedBackend, call, text

pytestmark = pytest.mark.anyio

QUESTION = "Which tower did Gustave Eiffel build in Paris?"
PAGES = {
    "http://corpus/tower": "The Eiffel Tower in Paris is named after Gustave Eiffel.",
    "http://corpus/gustave": "Gustave Eiffel was a French engineer who built the tower in Paris.",
    "http://corpus/louvre": "The Louvre is a museum in Paris.",
}


def make(*replies: Completion, allowed=("search", "open_page"), question=QUESTION, no_progress_steps=4):
    search = DictSearch(PAGES)
    executor = ToolExecutor([search, DictOpen(PAGES)])

    def script(request):
        if request.forced:
            return text("The Eiffel Tower")
        return replies[min(int(request.request_id.split(":")[2]), len(replies) - 1)]

    backend, sink = ScriptedBackend(script), MemorySink()
    limits = TrajectoryLimits(max_steps=6, no_progress_steps=no_progress_steps)
    spec = TrajectorySpec(job_id="job1", index=0, question=question, allowed_tools=frozenset(allowed),
                          sampling=Sampling(temperature=0.0, seed=1), limits=limits, opening_search=False)
    return Trajectory(spec, backend, executor, sink=sink), backend, search, sink


def _opened(sink: MemorySink) -> list[str]:
    return [e.arguments["url"] for e in sink.of_type(ToolCallEvent) if e.tool == "open_page"]


async def test_a_repeated_page_opens_the_next_page_the_searches_listed_instead():
    trajectory, backend, search, sink = make(
        call("search", query="paris tower"), call("open_page", url="http://corpus/tower"),
        call("open_page", url="http://corpus/tower"), call("answer", answer="The Eiffel Tower"))
    result = await trajectory.run()
    assert result.answer == "The Eiffel Tower" and len(result.steps) == 4
    assert _opened(sink) == ["http://corpus/tower", "http://corpus/gustave"]  # listed second, not opened before
    told = trajectory.messages[7]
    assert told["role"] == "tool" and told["tool_call_id"] == "c_open_page"
    assert told["content"].startswith(prompts.REPEATED_CALL_REPLACED.format(
        tool="open_page", instead='open_page("http://corpus/gustave")'))
    assert "French engineer" in told["content"]
    replaced = sink.of_type(ToolResultEvent)[-1]
    assert replaced.ok and replaced.note == "in place of a repeated open_page"
    assert result.steps[2].observations[0].call.arguments == {"url": "http://corpus/gustave"}
    assert not result.steps[2].observations[0].repeated


async def test_a_repeated_search_searches_a_part_of_the_question_not_searched_yet():
    trajectory, backend, search, sink = make(
        call("search", query=QUESTION), call("search", query=QUESTION.lower()), call("search", query=QUESTION),
        call("answer", answer="The Eiffel Tower"))
    await trajectory.run()
    # the question's names, several words first
    assert search.queries == [QUESTION, "Gustave Eiffel", "Paris"]


async def test_when_every_listed_page_is_open_a_repeated_page_searches_instead():
    opens = [call("open_page", url=url) for url in ("http://corpus/tower", "http://corpus/gustave")]
    trajectory, _, search, sink = make(call("search", query="eiffel engineer"), *opens, opens[0],
                                       call("answer", answer="The Eiffel Tower"))
    await trajectory.run()
    assert _opened(sink) == ["http://corpus/tower", "http://corpus/gustave"]
    assert search.queries == ["eiffel engineer", "Gustave Eiffel"]


async def test_with_nothing_left_to_run_the_model_is_told_of_the_repeat():
    trajectory, _, search, sink = make(call("search", query="eiffel"), call("search", query="eiffel"),
                                       call("answer", answer="The Eiffel Tower"), allowed=("search",),
                                       question="which tower is in paris?")  # no name to search on its own
    result = await trajectory.run()
    assert search.queries == ["eiffel"] and result.steps[1].observations[0].repeated
    assert trajectory.messages[5]["content"] == prompts.REPEATED_CALL.format(tool="search")
    assert sink.of_type(ToolResultEvent)[-1].note == "repeated"


def test_only_searches_and_pages_are_replaced_and_only_by_tools_the_job_allows():
    seen = {call_signature(ToolCall(id="a", name="search", arguments={"query": QUESTION}))}
    code = ToolCall(id="p", name="python", arguments={"code": "1"})
    assert unexplored_call(code, QUESTION, {"python", "search"}, seen, []) is None
    again = ToolCall(id="s", name="search", arguments={"query": QUESTION})
    assert unexplored_call(again, QUESTION, {"open_page"}, seen, ["http://corpus/tower"]) == ToolCall(
        id="s", name="open_page", arguments={"url": "http://corpus/tower"})
    assert unexplored_call(again, QUESTION, {"python"}, seen, ["http://corpus/tower"]) is None


async def test_reading_a_listed_page_whole_is_progress():
    trajectory, _, _, _ = make(call("search", query="the"), *[call("open_page", url=u) for u in PAGES],
                               call("answer", answer="The Eiffel Tower"), no_progress_steps=2)
    result = await trajectory.run()  # the search listed every page: counting new URLs only, two reads stopped it
    assert [len(s.observations[0].sources) for s in result.steps[:4]] == [3, 1, 1, 1]
    assert (result.stop_reason, len(result.steps)) == ("answered", 5)


LOOP_PRINTS_EACH = "for i in range(3):\n    x = i\n    print(x)"
LOOP_PRINTS_LAST = "for i in range(3):\n    x = i\nprint(x)"


def test_programs_and_urls_differing_in_case_or_spacing_are_different_calls_and_searches_are_not():
    def same(name, a, b):
        return call_signature(ToolCall(id="a", name=name, arguments=a)) == call_signature(
            ToolCall(id="b", name=name, arguments=b))

    assert not same("python", {"code": LOOP_PRINTS_EACH}, {"code": LOOP_PRINTS_LAST})
    assert not same("python", {"code": "print('A')"}, {"code": "print('a')"})
    assert not same("open_page", {"url": "https://en.wikipedia.org/wiki/Red_Dwarf"},
                    {"url": "https://en.wikipedia.org/wiki/Red_dwarf"})  # a TV series, a star
    assert same("search", {"query": "Red  Dwarf"}, {"query": "red dwarf"})


async def test_a_program_differing_from_an_earlier_one_only_in_indentation_runs():
    from tests.heavy.test_trajectory import by_step
    from tests.heavy.test_trajectory import make as make_trajectory

    trajectory, _, _, _ = make_trajectory(by_step(call("python", code=LOOP_PRINTS_EACH),
                                                  call("python", code=LOOP_PRINTS_LAST), call("answer", answer="2")),
                                          allowed=("python",))
    result = await trajectory.run()
    assert [o.repeated for s in result.steps[:2] for o in s.observations] == [False, False]
