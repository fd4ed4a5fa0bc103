"""The evaluation's metrics follow the official HotpotQA script."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "eval_hotpotqa.py"
spec = importlib.util.spec_from_file_location("eval_hotpotqa", SCRIPT)
eval_hotpotqa = importlib.util.module_from_spec(spec)
spec.loader.exec_module(eval_hotpotqa)


@pytest.mark.parametrize(("prediction", "gold", "em", "f1"), [
    ("The Eiffel Tower", "eiffel tower", 1.0, 1.0),
    ("Paris, France", "Paris", 0.0, 2 / 3),
    ("yes", "no", 0.0, 0.0),
    ("no it is", "no", 0.0, 0.0),  # yes/no answers must match exactly
    ("", "Paris", 0.0, 0.0),
])
def test_em_and_f1(prediction, gold, em, f1):
    assert eval_hotpotqa.exact_match(prediction, gold) == em
    assert eval_hotpotqa.f1_score(prediction, gold) == pytest.approx(f1)


def test_corpus_has_one_page_per_distinct_paragraph(tmp_path):
    rows = [{"context": [["A", ["x. ", "y."]], ["B", ["z."]]]}, {"context": [["A", ["x. ", "y."]]]}]
    pages = [json.loads(line) for line in eval_hotpotqa.write_corpus(rows, tmp_path).read_text().splitlines()]
    assert pages == [{"title": "A", "text": "x. y."}, {"title": "B", "text": "z."}]


def test_summary_per_setting_averages_the_questions_done():
    outcome = {"gold": "Paris", "em": 1.0, "f1": 1.0, "tokens": 100, "seconds": 2.0, "votes": {"Paris": 1},
               "reads": {"0": "Paris"}, "more_reads": []}
    lone_wrong = {**outcome, "em": 0.0, "f1": 0.5, "votes": {"Lyon": 1}, "reads": {"0": "Paris France"}}
    rows = eval_hotpotqa.summarise({1: [outcome, lone_wrong], 8: []})
    assert [(r["trajectories"], r["questions"], r["em"], r["f1"], r["tokens"]) for r in rows] == [
        (1, 2, 0.5, 0.75, 200), (8, 0, 0.0, 0.0, 0)]
    assert (rows[0]["votes_f1"], rows[0]["ceiling_f1"]) == (0.5, pytest.approx(5 / 6))  # "Paris France": F1 2/3
