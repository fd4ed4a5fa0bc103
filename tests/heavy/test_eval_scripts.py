"""scripts/eval_quotes.py and scripts/eval_reports.py score what they claim to (their runs are in the docs)."""

import importlib.util
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))  # the scripts import their sibling eval_hotpotqa


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


eval_quotes, eval_reports = _load("eval_quotes"), _load("eval_reports")

ROW = {"question": "The director of the romantic comedy Big Stone Gap is based in what New York city?",
       "answer": "Greenwich Village",
       "context": [["Big Stone Gap (film)", ["Big Stone Gap is a 2014 American romantic comedy film directed by "
                                             "Adriana Trigiani.", " It is set in Virginia."]],
                   ["Adriana Trigiani", ["Adriana Trigiani is an Italian American author.", " She is based in "
                                         "Greenwich Village."]],
                   ["Film genres", ["A comedy may be set in a city."]]],
       "supporting_facts": [["Big Stone Gap (film)", 0], ["Adriana Trigiani", 1]]}


def test_the_quote_measure_counts_facts_pages_and_the_answer():
    assert eval_quotes.score_question(ROW, 2, eval_quotes.SETTINGS["+ pages a quote names (now)"]) == (1.0, True, True)
    # by words alone her page's sentences are below the floor: one fact of two, one page, no answer
    assert eval_quotes.score_question(ROW, 2, eval_quotes.SETTINGS["by words alone (before)"]) == (0.5, False, False)
    assert eval_quotes.answer_sentence_is_a_fact(ROW) is True


def test_the_report_measure_reads_the_headline_findings_and_quotes_apart():
    markdown = ("# Q?\n\n**Answer:** 1889 [1]\n\n2 of 2 trajectories gave this answer.\n\n## Findings\n\n"
                "The tower was built by Eiffel [1].\n\nFrom the fetched pages, word for word:\n\n"
                "- “It was finished in 1889.” [1]\n\n## Where the trajectories disagreed\n\n- “Gustave”: 1\n\n"
                "## Sources\n\n1. [t](http://x)")
    parts = eval_reports.report_parts(markdown)
    assert [eval_reports.says(parts[p], "1889") for p in eval_reports.PARTS] == [True, False, True]
    assert eval_reports.says(parts["findings"], "Eiffel") and not eval_reports.says(parts["quotes"], "Gustave")
    # a report whose pass wrote no claim: its lead into the quotes is no finding
    fallback = ("# Q?\n\n**Answer:** x\n\n## Findings\n\nThe report pass wrote no claim a fetched page supports; the "
                "most relevant passages found:\n\n- “It was finished in 1889.” [1]\n\n## Sources\n\n1. [t](http://x)")
    parts = eval_reports.report_parts(fallback)
    assert parts["findings"].strip() == "" and eval_reports.says(parts["quotes"], "1889")


def test_the_report_measure_reads_the_answer_and_the_quotes_as_written():
    # the report escapes them as literal Markdown ("\\_\\_exit\\_\\_()"); the findings are the model's Markdown
    from heavy.aggregate.markers import as_text

    markdown = (f"# Q?\n\n**Answer:** {as_text('__exit__()')} [1]\n\n2 of 2 trajectories gave this answer.\n\n"
                "## Findings\n\nIt calls `__exit__()` [1].\n\nFrom the fetched pages, word for word:\n\n"
                f"- “{as_text('It calls __exit__() at the end [2].')}” [1]\n\n## Sources\n\n1. [t](http://x)")
    parts = eval_reports.report_parts(markdown)
    assert parts["answer"].startswith(" __exit__() [1]\n")
    assert "- “It calls __exit__() at the end [2].” [1]" in parts["quotes"]
    assert "It calls `__exit__()` [1]." in parts["findings"]


def test_eval_results_record_the_dtype_the_runtime_computes_in(monkeypatch):
    from heavy.config import Settings

    eval_hotpotqa = _load("eval_hotpotqa")
    assert eval_hotpotqa.computed_dtype(Settings(runtime_dtype="float32")) == "float32"
    monkeypatch.setattr("runtime.dtypes.native_bf16", lambda device="cpu": True)
    assert eval_hotpotqa.computed_dtype(Settings(runtime_dtype="auto")) == "bfloat16"
    assert eval_hotpotqa.computed_dtype(Settings(), "openai") is None  # the endpoint's dtype is its own


def test_eval_transcripts_record_the_call_run_in_place_of_a_repeat():
    # replays (scripts/replay_aggregation.py) re-run the recorded calls: they must be the calls that ran
    from heavy.agent.steps import ActionStep, Observation
    from heavy.llm.types import ToolCall, Usage

    said = ToolCall(id="c1", name="open_page", arguments={"url": "http://corpus/1"})
    ran = ToolCall(id="c1", name="open_page", arguments={"url": "http://corpus/2"})
    answer = ToolCall(id="c2", name="answer", arguments={"answer": "1889"})
    step = ActionStep(index=3, content="", reasoning="", calls=(said, answer),
                      observations=(Observation(call=ran, text="page 2"),), usage=Usage())
    assert _load("eval_hotpotqa")._ran(step) == [["open_page", {"url": "http://corpus/2"}],
                                                 ["answer", {"answer": "1889"}]]


def test_the_report_measure_sums_what_the_claim_check_kept_and_refuted():
    def row(found, checked):
        greedy = {**checked, "refuted": [*checked["refuted"], "One more [3]."]}
        shipped = {**checked, "gold_anywhere": found is not None}
        return {"found": found, "findings_kept": 3, "dropped": 1, "checked": shipped, "checked_greedy": greedy}

    out = {"trajectories": 1, "per_question": [
        row({"answer": False, "findings": True, "quotes": False},
            {"findings_kept": 2, "refuted": ["It was 1887 [1]."], "gold_in_findings": True, "gold_refuted": False}),
        row(None, {"findings_kept": 1, "refuted": ["No [1].", "Yes [2]."], "gold_in_findings": False,
                   "gold_refuted": False})]}
    text = eval_reports.summary(out)
    assert "findings kept 6, dropped 2" in text
    assert "with the claim check (as shipped): findings kept 3, refuted 3; gold answer in the findings 1 of 1, in a " \
           "refuted finding on 0; anywhere in the report 1 of 1" in text
    assert "with the claim check (greedy reply alone): findings kept 3, refuted 5; gold answer in the findings 1 of " \
           "1, in a refuted finding on 0\n" in text + "\n"


def test_the_search_probe_asks_for_pages_the_python_reference_has(tmp_path):
    import sqlite3

    from heavy.stdlib_corpus import build_stdlib_corpus

    probe = _load("probe_search")
    build_stdlib_corpus(tmp_path / "python.sqlite")
    with sqlite3.connect(tmp_path / "python.sqlite") as db:
        titles = {title for (title,) in db.execute("SELECT title FROM docs")}
    wanted = {probe.TITLE_PREFIX + page for _, pages in probe.PYTHON_QUESTIONS for page in pages}
    assert wanted <= titles, wanted - titles
