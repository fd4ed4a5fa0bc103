"""scripts/replay_aggregation.py rebuilds a recorded trajectory's evidence by the agent loop's rules."""

import importlib.util
import socket
import sys
import time
from pathlib import Path

import pytest

from heavy.agent.trajectory import FORCED_CONFIDENCE
from heavy.tools.base import ToolContext
from tests.heavy.e2e_corpus import small_corpus_tools

pytestmark = pytest.mark.anyio

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))  # the script imports its sibling eval_hotpotqa
spec = importlib.util.spec_from_file_location("replay_aggregation", SCRIPTS / "replay_aggregation.py")
replay = importlib.util.module_from_spec(spec)
spec.loader.exec_module(replay)


async def test_a_recorded_trajectory_is_rebuilt_on_this_runs_server(tmp_path):
    with small_corpus_tools(tmp_path) as executor:
        base = await replay.server_base(executor, "Scott Derrickson")
        page = f"{base}/doc/1"
        recorded_page = page.replace(base, "http://127.0.0.1:1")  # the recorded run's server had another port
        answered = {"answer": "American", "stop": "answered", "temperature": 0.3, "steps": [
            {"calls": [["search", {"query": "Scott Derrickson"}]]},
            {"calls": [["open_page", {"url": recorded_page}]]},
            {"calls": [["answer", {"answer": "American", "confidence": "0.8", "sources": [recorded_page]}]]},
        ]}
        result = await replay.rebuild(answered, 0, "job-a", executor, base, trajectories=1)
        assert result.answer == "American" and result.confidence == 0.8 and result.temperature == 0.3
        assert [s.url for s in result.cited] == [page]
        assert page in result.excerpts and "American director" in result.excerpts[page]
        assert len(result.evidence) > 1  # the search's results count as gathered too

        forced = {"answer": "American", "stop": "max_steps", "temperature": 0.0,
                  "steps": [{"calls": [["search", {"query": "Ed Wood filmmaker"}]]}]}
        result = await replay.rebuild(forced, 1, "job-b", executor, base, trajectories=1)
        assert result.confidence == FORCED_CONFIDENCE
        assert result.cited and all("american" in result.excerpts[s.url].lower() for s in result.cited)


async def test_the_corpus_is_served_on_the_port_asked_for_so_replays_read_the_same_urls(tmp_path):
    with socket.socket() as probe:  # a port free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with small_corpus_tools(tmp_path, port=port) as executor:
        assert await replay.server_base(executor, "Scott Derrickson") == f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("recorded, first", [({}, "Comparisons"),
                                             ({"search_keeps_function_words": False}, "The yield statement")])
async def test_a_replay_searches_as_its_run_searched(recorded, first):
    # runs recorded before searches left function words out ("what", "does") kept them: their replays must too
    pages = [["The yield statement", ["A yield statement in a function makes it a generator."]],
             ["Comparisons", ["What do comparisons yield? What they do yield is what does: True or False."]],
             ["The return statement", ["A return statement leaves a function."]],
             ["The pass statement", ["The pass statement is a null operation in a function body."]],
             *([f"Literal {n}", [f"Literal number {n} is a constant."]] for n in range(4))]
    rows = [{"question": "What does the yield statement do in a function?", "context": pages}]
    async with replay.recorded_corpus(rows, 0, recorded) as (executor, _):
        context = ToolContext(job_id="j", trajectory=0, allowed_tools=frozenset({"search"}),
                              deadline=time.monotonic() + 30)
        found = await executor.call("search", {"query": rows[0]["question"], "k": 1}, context)
    assert f"\n[1] {first}\n" in found.text, found.text
