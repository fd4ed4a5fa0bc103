"""What a user gets wrong on the `heavy` command line (a path, a corpus file, a HEAVY_* setting, an option, --url or
--key) is one line on stderr and an exit code other than 0, before anything runs, never a traceback."""

from contextlib import nullcontext
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from heavy.cli import app, main
from heavy.config import get_settings
from heavy.corpus.index import CorpusIndex


def test_ask_reports_a_missing_index_in_one_line(tmp_path):
    result = CliRunner().invoke(app, ["ask", "q?", "--backend", "openai", "--index", str(tmp_path / "none.sqlite"),
                                      "--no-live"])
    assert result.exit_code == 1 and "no corpus index" in result.output


@pytest.mark.parametrize("options, message", [
    (["--tool", "shell"], "'shell' is not one of"),
    (["--search", "web", "--index", "corpus.sqlite"], "--index is the local corpus's; the web search has none"),
])
def test_ask_refuses_a_tool_it_has_not_and_an_index_for_the_web(options, message):
    result = CliRunner().invoke(app, ["ask", "q?", "--backend", "openai", "--no-live", *options])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("where, message", [("missing/result.json", "is in a folder that does not exist"),
                                            ("", "is a folder: name a file in it")])
def test_ask_refuses_a_json_path_it_could_not_write_before_the_job_runs(where, message, tmp_path, monkeypatch):
    # found out once the job had run (its minutes spent, its tokens charged): an OSError after the report
    web = SimpleNamespace(names=frozenset({"search", "open_page"}))
    monkeypatch.setattr("heavy.cli.web_tools", lambda: nullcontext(web))
    ran = []

    async def capture(spec, backend_name, executor, show_live):
        ran.append(spec)
        raise RuntimeError("captured")

    monkeypatch.setattr("heavy.cli._run", capture)
    path = tmp_path / where
    result = CliRunner().invoke(app, ["ask", "q?", "--backend", "openai", "--no-live", "--search", "web", "--json",
                                      str(path)])
    assert result.exit_code == 2 and ran == [], result.output
    assert result.stderr.startswith(f"error: --json {path} {message}") and len(result.stderr.splitlines()) == 1


def test_ask_refuses_an_empty_question_in_one_line():
    result = CliRunner().invoke(app, ["ask", "   ", "--backend", "openai"])
    assert result.exit_code == 2 and "question is empty" in result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, ValueError)


@pytest.mark.parametrize("argv, env, message", [
    (["corpus", "add", "/nonexistent/docs"], {}, "error: FileNotFoundError: corpus path does not exist"),
    (["corpus", "serve", "--index", "/nonexistent/index.sqlite"], {}, "error: FileNotFoundError: no corpus index at"),
    (["corpus", "add", "{bad}"], {}, "error: CorpusFormatError: {bad}:1: not valid JSON"),
    (["ask", "q?"], {"HEAVY_TRAJECTORIES": "many"}, "error: HEAVY_TRAJECTORIES: Input should be a valid integer"),
    # a list not written as JSON, as docs/settings.md asks: pydantic-settings' SettingsError, a traceback
    (["ask", "q?"], {"HEAVY_ALLOWED_TOOLS": "search,python"}, "error: HEAVY_ALLOWED_TOOLS: not JSON (Expecting value: "
                                                                "line 1 column 1 (char 0)); a list is written as"),
    (["worker"], {"HEAVY_PYTHON_WALL_S": "45"}, "error: HEAVY_PYTHON_WALL_S: Input should be less than 30 (got '45')"),
    (["up"], {"HEAVY_PYTHON_SCRATCH_BYTES": "0"}, "error: HEAVY_PYTHON_SCRATCH_BYTES: Input should be greater than"),
    # a check across settings was "HEAVY_: Value error, ..." with every setting given, secrets too
    (["worker"], {"HEAVY_STEP_TOKENS": "70000", "HEAVY_OPENAI_API_KEY": "sk-deployed"},
     "error: HEAVY_* settings: step_tokens must be <= trajectory_tokens\n"),
    # httpx refused these while the client was made, outside the one-line handling: InvalidURL, UnicodeEncodeError
    (["jobs", "--url", "http://[::1", "list"], {}, "error: not a usable --url / --key"),
    # no scheme: httpx read the host as one ("unsupported protocol 'localhost://'")
    (["jobs", "--url", "localhost:8080", "list"], {}, "error: --url / HEAVY_API_URL 'localhost:8080': give the "
                                                      "service as http://HOST:PORT"),
    (["jobs", "list"], {"HEAVY_API_URL": "http://127.0.0.1:1", "HEAVY_API_KEY": "hv_pasted…"},
     "error: not a usable --url / --key"),
])
def test_the_heavy_command_reports_a_users_mistake_in_one_line(argv, env, message, tmp_path, monkeypatch, capsys):
    (tmp_path / "bad.jsonl").write_text('{"title": 1\n')
    monkeypatch.setattr("sys.argv", ["heavy", *(a.replace("{bad}", str(tmp_path / "bad.jsonl")) for a in argv)])
    monkeypatch.setenv("HEAVY_CORPUS_INDEX", str(tmp_path / "index.sqlite"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    with pytest.raises(SystemExit) as exit_:
        main()
    get_settings.cache_clear()
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.startswith(message.replace("{bad}", str(tmp_path / "bad.jsonl")))
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_an_empty_corpus_is_never_written_nor_searched(tmp_path, monkeypatch, capsys):
    # seen: an empty index left by `heavy corpus add` of a mistyped path; every later `heavy ask` searched it, found
    # nothing, and answered from the model's memory with no word of why
    index = tmp_path / "index.sqlite"
    monkeypatch.setenv("HEAVY_CORPUS_INDEX", str(index))
    get_settings.cache_clear()
    (tmp_path / "empty").mkdir()
    (tmp_path / "not-an-index.sqlite").write_text("hello")

    def heavy(*argv: str) -> str:
        monkeypatch.setattr("sys.argv", ["heavy", *argv])
        with pytest.raises(SystemExit) as exit_:
            main()
        err = capsys.readouterr().err
        assert exit_.value.code == 1 and len(err.splitlines()) == 1 and "Traceback" not in err
        return err

    for path in (tmp_path / "empty", tmp_path / "missing"):
        heavy("corpus", "add", str(path))
        assert not index.exists()
    assert heavy("corpus", "add", str(tmp_path / "empty")).startswith(
        f"error: CorpusFormatError: no file to index under {tmp_path / 'empty'} (supported: .htm .html .jsonl")
    CorpusIndex(index)  # an index file with no documents (as sessions before this check could leave)
    assert heavy("ask", "q?", "--backend", "openai", "--no-live") == (
        f"error: CorpusFormatError: the corpus index at {index} holds no documents; add some with `heavy corpus add "
        "PATH`\n")
    assert heavy("ask", "q?", "--index", str(tmp_path / "not-an-index.sqlite"), "--no-live").startswith(
        f"error: CorpusFormatError: {tmp_path / 'not-an-index.sqlite'} is not a corpus index (file is not a database)")
    get_settings.cache_clear()
