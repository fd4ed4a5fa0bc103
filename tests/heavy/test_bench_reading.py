"""scripts/bench_reading.py: the pages each trajectory would read, and how its ensembles vote."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from heavy.corpus.commands import corpus_add
from heavy.corpus.index import CorpusIndex
from tests.heavy.fakes import ScriptedBackend, text

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))  # the script imports its sibling eval_hotpotqa
spec = importlib.util.spec_from_file_location("bench_reading", SCRIPTS / "bench_reading.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

PAGES = {
    "Scott Derrickson": "Scott Derrickson is an American director of horror films.",
    "Ed Wood": "Edward Davis Wood Jr. was an American filmmaker and actor.",
    "Doctor Strange": "Doctor Strange is a 2016 film directed by Scott Derrickson.",
}


def test_trajectory_k_holds_the_questions_results_and_those_of_one_named_part(tmp_path):
    corpus = tmp_path / "pages.jsonl"
    corpus.write_text("\n".join(json.dumps({"title": t, "text": x}) for t, x in PAGES.items()))
    corpus_add(corpus, tmp_path / "index.sqlite")
    index = CorpusIndex(tmp_path / "index.sqlite")
    question = "Were Scott Derrickson and Ed Wood of the same nationality?"
    first = bench.trajectory_pages(index, question, 0)
    second = bench.trajectory_pages(index, question, 1)
    assert {s.title for s in first.evidence} <= set(PAGES) and first.evidence
    assert {s.title for s in first.evidence} <= {s.title for s in second.evidence}  # plus its own search's results
    assert all(second.excerpts[s.url] == s.snippet for s in second.evidence)


def test_the_most_read_answer_wins_and_a_tie_goes_to_the_first_reading():
    assert bench.voted(["1889", "1887", "1887", ""]) == "1887"
    assert bench.voted(["Yes", "no", "yes", "No"]) == "Yes"
    assert bench.voted(["", ""]) == ""


@pytest.mark.anyio
async def test_each_variant_gives_its_readings_as_answers(tmp_path):
    corpus = tmp_path / "pages.jsonl"
    corpus.write_text("\n".join(json.dumps({"title": t, "text": x}) for t, x in PAGES.items()))
    corpus_add(corpus, tmp_path / "index.sqlite")
    row = {"_id": "q", "question": "Were Scott Derrickson and Ed Wood of the same nationality?",
           "supporting_facts": [["Scott Derrickson", 0], ["Ed Wood", 0]]}
    backend = ScriptedBackend(lambda request: text("yes"))
    readings, held = await bench.read_question(backend, CorpusIndex(tmp_path / "index.sqlite"), row,
                                               ["read8", "order8"])
    assert readings == {"one": ["yes"], "read8": ["yes"] * 8, "order8": ["yes"] * 8} and held == "2/2"
