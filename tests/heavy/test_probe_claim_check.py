"""scripts/probe_claim_check.py scores a model's verdicts on claims whose truth is known, through the report's own
claim check."""

import asyncio
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from heavy.aggregate.claim_check import negations
from heavy.aggregate.swaps import swapped
from heavy.llm.types import Completion
from tests.heavy.fakes import ScriptedBackend

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))  # the script imports its sibling eval_hotpotqa
spec = importlib.util.spec_from_file_location("probe_claim_check", SCRIPTS / "probe_claim_check.py")
probe_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe_script)
TOWER = ["The Eiffel Tower was begun in 1887. ", "It was finished in 1889 by Gustave Eiffel's company."]
QUESTIONS = [{"context": [["Eiffel Tower", TOWER], ["Paris", ["Paris is in France."]]],
              "supporting_facts": [["Eiffel Tower", 1], ["Paris", 0], ["Eiffel Tower", 7]]}]


@pytest.fixture
def data(tmp_path) -> Path:
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in QUESTIONS))
    return path


def all_pairs(data: Path) -> list[tuple[str, str, bool]]:
    return probe_script.PAIRS + probe_script.generated_pairs() + probe_script.swapped_pairs(data)


def _knowing(truth: dict[str, bool]):
    """A judge that knows the answers: yes exactly for the supported pairs' claims and the others' negations (no to
    any other statement, e.g. a claim's rivals)."""
    return lambda request: "Yes." if truth.get(request.messages[0]["content"].split("Claim: ")[1].split("\n")[0]) \
        else "No."


def _with_shares(reply: str) -> Completion:
    """The reply, with the log-probabilities that make it the likelier word."""
    yes = -0.1 if reply.lower().startswith("yes") else -2.5
    return Completion(reply, top_logprobs=((("Yes", yes), ("No", -2.6 - yes)),))


def test_swapped_pairs_are_a_supporting_sentence_and_the_same_with_a_number_or_name_of_its_paragraph(data):
    assert probe_script.swapped_pairs(data) == [
        ("The Eiffel Tower was begun in 1887. It was finished in 1889 by Gustave Eiffel's company.",
         "It was finished in 1889 by Gustave Eiffel's company.", True),
        ("The Eiffel Tower was begun in 1887. It was finished in 1889 by Gustave Eiffel's company.",
         "It was finished in 1887 by Gustave Eiffel's company.", False)]  # "Paris is in France." holds no rival


def test_generated_pairs_are_half_supported_and_each_true_claim_stands_in_its_passage():
    generated = probe_script.generated_pairs()
    assert len(generated) == 4 * probe_script.GENERATED_EACH and sum(ok for *_, ok in generated) == len(generated) / 2
    assert all(claim in " ".join(passage.split()) for passage, claim, ok in generated if ok)
    assert all(claim not in " ".join(passage.split()) for passage, claim, ok in generated if not ok)


@pytest.mark.parametrize("knows, right, kept", [(True, (10, 40, 2), (0, 0, 0)), (False, (5, 20, 1), (5, 20, 1))])
def test_the_probe_counts_the_verdicts_that_match_the_known_truth(knows, right, kept, data, monkeypatch, capsys):
    pairs = all_pairs(data)
    truth = {**{n: not ok for _, c, ok in pairs for n in negations(c)}, **{c: ok for _, c, ok in pairs}}
    judge = _knowing(truth) if knows else (lambda request: "yes")
    backend = ScriptedBackend(lambda request: _with_shares(judge(request)))
    monkeypatch.setattr(probe_script, "make_backend", lambda settings, name: backend)
    asyncio.run(probe_script.probe(data=data))
    totals = [line for line in capsys.readouterr().out.splitlines() if line.startswith("==")]
    assert [line.split(":")[0] for line in totals] == [
        "== hand-written, contrast", "== hand-written, greedy", "== generated, contrast", "== generated, greedy",
        "== swapped, contrast", "== swapped, greedy"]
    for line, n, of, wrong in zip(totals, [r for r in right for _ in "cg"], (10, 10, 40, 40, 2, 2),
                                  [k for k in kept for _ in "cg"], strict=True):
        assert f": {n}/{of} right; wrong claims kept {wrong}/{of // 2}" in line
    # the contrast asks each claim, its negations (two for a conditional) and its rivals; the greedy check each once
    asked = sum(2 + len(negations(claim)) + len(swapped(claim, passage)) for passage, claim, _ in pairs)
    assert len(backend.requests) == asked > 3 * 50 and all(r.sampling.temperature == 0.0 for r in backend.requests)
