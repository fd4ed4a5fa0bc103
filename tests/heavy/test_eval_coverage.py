"""scripts/eval_coverage.py counts, per recorded setting, the questions whose gold pages the trajectories gathered
and the judge's pool held, and splits the answers' F1 by it (a recorded run rebuilt on a loopback corpus)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.anyio

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))  # the script imports its siblings
spec = importlib.util.spec_from_file_location("eval_coverage", SCRIPTS / "eval_coverage.py")
eval_coverage = importlib.util.module_from_spec(spec)
spec.loader.exec_module(eval_coverage)

PAGES = [["Scott Derrickson", ["Scott Derrickson is an American director."]],
         ["Ed Wood", ["Ed Wood was an American filmmaker."]],
         ["Kasper Schmeichel", ["Kasper Schmeichel is a Danish goalkeeper, son of Peter Schmeichel."]],
         ["Peter Schmeichel", ["Peter Schmeichel was voted the World's Best Goalkeeper in 1992."]],
         ["Cheese", ["Cheese is a dairy product."]]]
ROWS = [
    {"_id": "a", "question": "Were Scott Derrickson and Ed Wood of the same nationality?", "context": PAGES,
     "supporting_facts": [["Scott Derrickson", 0], ["Ed Wood", 0]]},
    {"_id": "b", "question": "What was the father of Kasper Schmeichel voted to be in 1992?", "context": PAGES,
     "supporting_facts": [["Kasper Schmeichel", 0], ["Peter Schmeichel", 0]]},
]


def asked(row_id: str, question: str, query: str, f1: float) -> dict:
    steps = [{"calls": [["search", {"query": query}]]}]
    return {"id": row_id, "question": question, "f1": f1,
            "transcripts": [{"answer": "x", "stop": "max_steps", "temperature": 0.0, "steps": steps}]}


async def test_coverage_counts_gold_pages_gathered_and_pooled_and_splits_f1(tmp_path):
    run = {"search_keeps_function_words": False, "settings": [{"trajectories": 1, "per_question": [
        asked("a", ROWS[0]["question"], "Scott Derrickson Ed Wood", 1.0),  # both gold pages come back
        asked("b", ROWS[1]["question"], "cheese dairy", 0.0),  # neither does
    ]}]}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run))
    (counted,) = await eval_coverage.coverage(path, ROWS, port=0)
    assert (counted["questions"], counted["gathered"], counted["pooled"]) == (2, 1, 1)
    assert (counted["f1_pooled"], counted["f1_not_pooled"]) == (1.0, 0.0)
