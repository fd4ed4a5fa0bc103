"""scripts/eval_summary.py merges chunked HotpotQA runs and their replays into one paired comparison."""

import gzip
import importlib.util
import json
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))  # the script imports its sibling eval_hotpotqa
spec = importlib.util.spec_from_file_location("eval_summary", SCRIPTS / "eval_summary.py")
summary_script = importlib.util.module_from_spec(spec)
sys.modules["eval_summary"] = summary_script  # its dataclass looks its module up there
spec.loader.exec_module(summary_script)


def _run(path: Path, rows: dict[int, list[tuple[str, str, float]]]) -> Path:
    """An eval_hotpotqa.py result: trajectories → [(question id, prediction, F1)]."""
    settings = [{"trajectories": n, "per_question": [
        {"id": q, "prediction": p, "em": float(f1 == 1.0), "f1": f1, "tokens": 1000 * n, "seconds": 10.0 * n}
        for q, p, f1 in per]} for n, per in rows.items()]
    path.write_text(json.dumps({"settings": settings}))
    return path


def test_chunks_merge_a_replay_overrides_answers_but_keeps_costs_and_only_shared_questions_count(tmp_path):
    first = _run(tmp_path / "a.json", {1: [("qa", "x", 0.0), ("qb", "y", 1.0)], 8: [("qa", "gold", 1.0)]})
    second = _run(tmp_path / "b.json", {1: [("qc", "z", 0.0)], 8: [("qb", "y", 1.0), ("qc", "w", 0.5)]})
    replay = tmp_path / "r.json"
    replay.write_text(json.dumps({"settings": [{"trajectories": 1, "per_question": [
        {"id": "qa", "replayed": "gold", "em": 1.0, "f1": 1.0}]}]}))
    outcomes = summary_script.load_outcomes([first, second, replay])
    assert outcomes[1]["qa"].prediction == "gold" and outcomes[1]["qa"].tokens == 1000  # cost from the recording
    summary = summary_script.summarise(outcomes, {"qa": 0, "qb": 1, "qc": 2}, draws=200)
    assert summary["questions"] == ["qa", "qb", "qc"]
    one, eight = summary["settings"]
    assert (one["f1"], eight["f1"]) == (2 / 3, 2.5 / 3)
    assert eight["tokens_per_question"] == 8000
    gap = summary["gaps"][0]
    assert abs(gap["gap"] - 0.5 / 3) < 1e-9 and (gap["better"], gap["worse"]) == (1, 0)
    low, high = gap["ci95"]
    assert 0.0 <= low <= gap["gap"] <= high <= 0.5  # gaps of 0, 0, 0.5 resampled


def test_a_question_one_setting_lacks_is_left_out(tmp_path):
    run = _run(tmp_path / "a.json", {1: [("qa", "x", 1.0), ("qb", "y", 0.0)], 8: [("qa", "x", 1.0)]})
    summary = summary_script.summarise(summary_script.load_outcomes([run]), {"qa": 0, "qb": 1}, draws=50)
    assert summary["questions"] == ["qa"] and summary["gaps"][0]["gap"] == 0.0


def test_a_gzipped_run_as_kept_in_docs_reads_the_same(tmp_path):
    plain = _run(tmp_path / "a.json", {1: [("qa", "x", 1.0)], 8: [("qa", "gold", 0.5)]})
    packed = tmp_path / "a.json.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert summary_script.load_outcomes([packed]) == summary_script.load_outcomes([plain])


def test_two_agent_versions_are_compared_setting_by_setting_on_the_questions_both_ran(tmp_path):
    after = _run(tmp_path / "a.json", {1: [("qa", "x", 1.0), ("qb", "y", 0.5), ("qc", "z", 1.0)],
                                       8: [("qa", "x", 1.0)]})
    before = _run(tmp_path / "b.json", {1: [("qa", "x", 0.0), ("qb", "y", 0.5)]})
    rows = summary_script.compare(summary_script.load_outcomes([after]), summary_script.load_outcomes([before]),
                                  {"qa": 0, "qb": 1, "qc": 2}, draws=200)
    assert len(rows) == 1  # n=8 has nothing to compare with
    (row,) = rows
    assert (row["trajectories"], row["questions"], row["before"], row["after"]) == (1, 2, 0.25, 0.75)
    assert (row["gap"], row["better"], row["worse"]) == (0.5, 1, 0)
    assert 0.0 <= row["ci95"][0] <= 0.5 <= row["ci95"][1] <= 1.0


def test_the_votes_alone_and_the_best_answer_in_hand_are_scored_per_setting(tmp_path):
    tied = {"id": "qa", "gold": "Paris", "prediction": "Lyon", "em": 0.0, "f1": 0.0,
            "votes": {"Paris": 2, "Lyon": 2, "Nice": 1}, "reads": {"0": "Lyon"}, "more_reads": ["Paris France", ""]}
    unread = {"id": "qb", "gold": "no", "prediction": "yes", "em": 0.0, "f1": 0.0, "votes": {"yes": 1},
              "reads": {}, "more_reads": []}
    assert summary_script.candidate_scores(tied) == (0.5, 1.0)  # a blind tie-break; the best of every answer
    assert summary_script.candidate_scores(unread) == (0.0, 0.0)
    assert summary_script.candidate_scores({"id": "qc", "prediction": "x"}) == (None, None)  # an older file
    run = tmp_path / "a.json"
    run.write_text(json.dumps({"settings": [{"trajectories": 8, "per_question": [tied, unread]}]}))
    (row,) = summary_script.summarise(summary_script.load_outcomes([run]), {"qa": 0, "qb": 1}, draws=10)["settings"]
    assert (row["f1"], row["votes_f1"], row["ceiling_f1"]) == (0.0, 0.25, 0.5)


def test_a_setting_with_a_question_of_an_older_file_has_no_ceiling(tmp_path):
    run = _run(tmp_path / "a.json", {1: [("qa", "x", 1.0)]})
    (row,) = summary_script.summarise(summary_script.load_outcomes([run]), {"qa": 0}, draws=10)["settings"]
    assert row["votes_f1"] is None and row["ceiling_f1"] is None
