"""scripts/probe_claim_check.py scores a model's verdicts on claims whose truth is known."""

import asyncio
import importlib.util
from pathlib import Path

import pytest

from tests.heavy.fakes import ScriptedBackend, text

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "probe_claim_check.py"
spec = importlib.util.spec_from_file_location("probe_claim_check", SCRIPT)
probe_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe_script)


def _verdicts(request) -> str:
    """A judge that knows the answers: yes/true exactly for the supported pairs."""
    prompt = request.messages[0]["content"]
    supported = next(ok for passage, claim, ok in probe_script.PAIRS if f"{passage}\n" in prompt and claim in prompt)
    return ("Yes." if supported else "No.") if "yes or no" in prompt else ("True" if supported else "false")


@pytest.mark.parametrize("judge, right", [(_verdicts, 10), (lambda request: "yes, true", 5)])
def test_the_probe_counts_the_verdicts_that_match_the_known_truth(judge, right, monkeypatch, capsys):
    backend = ScriptedBackend(lambda request: text(judge(request)))
    monkeypatch.setattr(probe_script, "make_backend", lambda settings, name: backend)
    asyncio.run(probe_script.probe())
    totals = [line for line in capsys.readouterr().out.splitlines() if line.startswith("==")]
    assert len(totals) == 2 and all(f": {right}/10 right" in line for line in totals)
    assert len(backend.requests) == 20 and all(r.sampling.temperature == 0.0 for r in backend.requests)
