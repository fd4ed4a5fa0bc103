"""scripts/probe_claim_check.py scores a model's verdicts on claims whose truth is known, through the report's own
claim check."""

import asyncio
import importlib.util
from pathlib import Path

import pytest

from heavy.aggregate.claim_check import negations
from heavy.llm.types import Completion
from tests.heavy.fakes import ScriptedBackend

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "probe_claim_check.py"
spec = importlib.util.spec_from_file_location("probe_claim_check", SCRIPT)
probe_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe_script)
PAIRS = probe_script.PAIRS + probe_script.generated_pairs()


TRUTH = {**{n: not ok for _, c, ok in PAIRS for n in negations(c)}, **{c: ok for _, c, ok in PAIRS}}


def _knowing(request) -> str:
    """A judge that knows the answers: yes exactly for the supported pairs' claims and the others' negations."""
    return "Yes." if TRUTH[request.messages[0]["content"].split("Claim: ")[1].split("\n")[0]] else "No."


def _with_shares(reply: str) -> Completion:
    """The reply, with the log-probabilities that make it the likelier word."""
    yes = -0.1 if reply.lower().startswith("yes") else -2.5
    return Completion(reply, top_logprobs=((("Yes", yes), ("No", -2.6 - yes)),))


def test_generated_pairs_are_half_supported_and_each_true_claim_stands_in_its_passage():
    generated = probe_script.generated_pairs()
    assert len(generated) == 4 * probe_script.GENERATED_EACH and sum(ok for *_, ok in generated) == len(generated) / 2
    assert all(claim in " ".join(passage.split()) for passage, claim, ok in generated if ok)
    assert all(claim not in " ".join(passage.split()) for passage, claim, ok in generated if not ok)


@pytest.mark.parametrize("judge, right, kept",
                         [(_knowing, (10, 40), (0, 0)), (lambda request: "yes", (5, 20), (5, 20))])
def test_the_probe_counts_the_verdicts_that_match_the_known_truth(judge, right, kept, monkeypatch, capsys):
    backend = ScriptedBackend(lambda request: _with_shares(judge(request)))
    monkeypatch.setattr(probe_script, "make_backend", lambda settings, name: backend)
    asyncio.run(probe_script.probe())
    totals = [line for line in capsys.readouterr().out.splitlines() if line.startswith("==")]
    assert [line.split(":")[0] for line in totals] == ["== hand-written, contrast", "== hand-written, greedy",
                                                       "== generated, contrast", "== generated, greedy"]
    for line, n, of, wrong in zip(totals, [r for r in right for _ in "cg"], (10, 10, 40, 40),
                                  [k for k in kept for _ in "cg"], strict=True):
        assert f": {n}/{of} right; wrong claims kept {wrong}/{of // 2}" in line
    # the contrast asks each claim and its negations (two for a conditional), the greedy check each claim once
    asked = sum(2 + len(negations(claim)) for _, claim, _ in PAIRS)
    assert len(backend.requests) == asked > 3 * 50 and all(r.sampling.temperature == 0.0 for r in backend.requests)
