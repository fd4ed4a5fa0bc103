"""`heavy ask`'s options and HEAVY_* settings, turned into the job it runs (captured before it runs): budgets, tools,
trajectories and mode, the web or which local corpus."""

import json
from contextlib import nullcontext
from types import SimpleNamespace

from typer.testing import CliRunner

from heavy.cli import app
from heavy.config import get_settings
from heavy.corpus.commands import corpus_add
from heavy.tools.base import ToolContext
from tests.heavy.test_cli import DOCS


def _specs_of(tmp_path, monkeypatch, *options: str):
    """The jobs `heavy ask` would run with `options` and with none (captured before anything runs)."""
    index = tmp_path / "corpus.sqlite"
    (tmp_path / "docs.jsonl").write_text(json.dumps(DOCS[0]))
    corpus_add(tmp_path / "docs.jsonl", index)
    specs = []

    async def capture(spec, backend_name, executor, show_live):
        specs.append(spec)
        raise RuntimeError("captured")

    monkeypatch.setattr("heavy.cli._run", capture)
    args = ["ask", "q?", "--backend", "openai", "--index", str(index), "--no-live"]
    CliRunner().invoke(app, [*args, *options])
    CliRunner().invoke(app, args)
    return specs


def test_ask_passes_its_deadline_and_step_budget_to_the_job(tmp_path, monkeypatch):
    given, default = _specs_of(tmp_path, monkeypatch, "--deadline", "2400", "--max-steps", "12")
    assert (given.deadline_s, given.limits.deadline_s, given.limits.max_steps) == (2400, 2400, 12)
    settings = get_settings()
    assert (default.deadline_s, default.limits.deadline_s) == (settings.job_deadline_s, settings.job_deadline_s)
    assert default.limits.max_steps == settings.max_steps


def test_ask_passes_its_tools_and_token_budget_to_the_job(tmp_path, monkeypatch):
    given, default = _specs_of(tmp_path, monkeypatch, "--tool", "search", "--tool", "open_page", "--job-tokens", "5000")
    assert given.allowed_tools == {"search", "open_page"} and given.job_tokens == 5000
    settings = get_settings()
    assert default.allowed_tools == set(settings.allowed_tools) and default.job_tokens == settings.job_tokens


def test_ask_takes_its_trajectories_and_mode_from_flags_else_the_settings(tmp_path, monkeypatch):
    # the flags' defaults (8, report) were passed as if given: HEAVY_TRAJECTORIES and HEAVY_MODE never applied
    monkeypatch.setenv("HEAVY_TRAJECTORIES", "3")
    monkeypatch.setenv("HEAVY_MODE", "answer")
    get_settings.cache_clear()
    try:
        given, default = _specs_of(tmp_path, monkeypatch, "--trajectories", "5", "--mode", "report")
    finally:
        get_settings.cache_clear()
    assert (given.trajectories, given.mode) == (5, "report")
    assert (default.trajectories, default.mode) == (3, "answer")


def test_ask_searches_the_web_when_told_to(monkeypatch):
    web = SimpleNamespace(names=frozenset({"search", "open_page"}))  # no request leaves: the job is captured
    monkeypatch.setattr("heavy.cli.web_tools", lambda: nullcontext(web))
    ran = []

    async def capture(spec, backend_name, executor, show_live):
        ran.append((spec, executor))
        raise RuntimeError("captured")

    monkeypatch.setattr("heavy.cli._run", capture)
    result = CliRunner().invoke(app, ["ask", "q?", "--backend", "openai", "--no-live", "--search", "web"])
    assert "searching the web (ddgs)" in result.output
    (spec, executor), = ran
    assert executor is web and spec.allowed_tools == {"search", "open_page"}  # python: not among the web tools


def test_ask_without_a_corpus_uses_pythons_reference_topics_as_heavy_up_does(tmp_path, monkeypatch):
    monkeypatch.setenv("HEAVY_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HEAVY_CORPUS_INDEX", raising=False)
    monkeypatch.setenv("HEAVY_SEARCH", "local")
    monkeypatch.setattr("heavy.up.default_index_path", lambda settings: tmp_path / "none.sqlite")
    get_settings.cache_clear()
    searched = []

    async def capture(spec, backend_name, executor, show_live):
        called = ToolContext(job_id=spec.job_id, trajectory=0, allowed_tools=spec.allowed_tools)
        searched.append((await executor.call("search", {"query": "break statement loop"}, called)).text)
        raise RuntimeError("captured")

    monkeypatch.setattr("heavy.cli._run", capture)
    result = CliRunner().invoke(app, ["ask", "q?", "--backend", "openai", "--no-live"])
    get_settings.cache_clear()
    assert "built the local corpus from Python's reference topics" in result.output
    assert (tmp_path / "home" / "corpus" / "python-reference.sqlite").is_file()
    assert "Python reference: The \"break\" statement" in searched[0]


def test_ask_names_an_index_whose_path_holds_brackets_as_written(tmp_path, monkeypatch):
    # the path was printed as rich markup: "[/x]" in a folder's name raised MarkupError before the job started
    folder = tmp_path / "docs [/x] [old]"  # folders "docs [" and "x] [old]"
    folder.mkdir(parents=True)
    (folder / "docs.jsonl").write_text(json.dumps(DOCS[0]))
    corpus_add(folder / "docs.jsonl", folder / "corpus.sqlite")

    async def capture(spec, backend_name, executor, show_live):
        raise RuntimeError("captured")

    monkeypatch.setattr("heavy.cli._run", capture)
    result = CliRunner().invoke(app, ["ask", "q?", "--index", str(folder / "corpus.sqlite"), "--no-live"])
    assert "captured" in result.output and f"searching the local corpus {folder}" in result.output.replace("\n", "")
