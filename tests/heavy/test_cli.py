"""`heavy ask` end to end without a model: a scripted OpenAI-compatible server on loopback, a real local corpus
(index + page server), real tools, scheduler and aggregator."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from heavy.cli import app, main
from heavy.config import get_settings
from heavy.corpus.commands import corpus_add
from heavy.corpus.index import CorpusIndex
from heavy.tools.base import ToolContext

DOCS = [
    {"title": "Sinister (film)", "text": "Sinister is a 2012 horror film directed by Scott Derrickson."},
    {"title": "Scott Derrickson", "text": "Scott Derrickson is an American director born in 1966."},
    {"title": "Ed Wood", "text": "Ed Wood was an American filmmaker."},
]


def reply(message: dict, usage=(120, 12)) -> dict:
    return {"choices": [{"message": {"role": "assistant", **message}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1]}}


def script(body: dict) -> dict:
    """Search first (written as a fenced JSON block, as the small model does), then answer citing the URL seen."""
    if not body.get("tools"):
        return reply({"content": "Sinister was directed by Scott Derrickson [1]. It was made on the moon [5]."})
    last = body["messages"][-1]
    if last["role"] != "tool":
        call = {"name": "Sinister", "arguments": {"query": "Sinister film director"}}
        return reply({"content": f"```json\n{json.dumps(call)}\n```"})
    url = re.search(r"URL: (\S+)", last["content"]).group(1)
    arguments = json.dumps({"answer": "Scott Derrickson", "confidence": 0.9, "sources": [url]})
    return reply({"content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "answer", "arguments": arguments}}]})


class Holds:
    """Which requests the fake server keeps waiting (until released): a trajectory's request after its first tool
    result (the job is then mid-way), and, when asked, the report pass."""

    def __init__(self, trajectories: int = 0, report: bool = False):
        self.trajectories, self.report = trajectories, report
        self.held, self.release, self.lock = [], threading.Event(), threading.Lock()

    def hold(self, body: dict) -> None:
        with self.lock:
            after_tool = bool(body.get("tools")) and body["messages"][-1]["role"] == "tool"
            trajectory = after_tool and sum(b.get("tools") is not None for b in self.held) < self.trajectories
            report = self.report and not body.get("tools") and not any(not b.get("tools") for b in self.held)
            if trajectory or report:
                self.held.append(body)
            else:
                return
        self.release.wait(60)


@pytest.fixture
def holds(request):
    """Nothing held, unless a test gives (trajectories, report) as the parameter."""
    return Holds(*getattr(request, "param", ()))


@pytest.fixture
def fake_llm(holds):
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            holds.hold(body)
            payload = json.dumps(script(body)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    holds.release.set()
    server.shutdown()
    server.server_close()
    thread.join()


def test_ask_prints_a_cited_report_and_writes_json(tmp_path, monkeypatch, fake_llm):
    base_url, seen = fake_llm
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps(d) for d in DOCS))
    index = tmp_path / "corpus.sqlite"
    corpus_add(tmp_path / "docs.jsonl", index)
    monkeypatch.setenv("HEAVY_OPENAI_BASE_URL", base_url)
    monkeypatch.setenv("HEAVY_SEARCH", "local")
    get_settings.cache_clear()
    out = tmp_path / "result.json"
    result = CliRunner().invoke(app, ["ask", "Who directed Sinister?", "--trajectories", "2", "--backend", "openai",
                                      "--index", str(index), "--json", str(out), "--no-live"])
    get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "Scott Derrickson" in result.output and "Sources" in result.output
    assert "starting" not in result.output and result.output.count("answered") == 2  # the board once, as it ended
    # not a terminal: the report alone on stdout, as Markdown (`heavy ask ... > report.md`); the board on stderr
    assert result.stdout.startswith("# Who directed Sinister?") and "## Sources" in result.stdout
    assert "heavy: trajectories" in result.stderr and "heavy: trajectories" not in result.stdout
    data = json.loads(out.read_text())
    assert data["answer"] == "Scott Derrickson" and data["agreement"] == 1.0 and data["status"] == "done"
    assert data["sources"][0]["url"].startswith("http://127.0.0.1:") and data["sources"][0]["content_hash"]
    assert data["dropped_claims"] == ["It was made on the moon [5]."]
    assert "1 claim taken out of the report" in result.output and "- It was made on the moon [5]." in result.output
    assert {t["stop_reason"] for t in data["trajectories"]} == {"answered"}
    trajectory_calls = [b for b in seen if b.get("tools")]
    assert {b["user"] for b in trajectory_calls} == {data["job_id"]}  # prefix key = job id
    assert {t["function"]["name"] for t in trajectory_calls[0]["tools"]} == {"search", "open_page", "python", "answer"}


def _ask_in_a_process(tmp_path, base_url: str, *options: str) -> tuple[subprocess.Popen, Path]:
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps(d) for d in DOCS))
    corpus_add(tmp_path / "docs.jsonl", tmp_path / "corpus.sqlite")
    out = tmp_path / "result.json"
    env = os.environ | {"HEAVY_OPENAI_BASE_URL": base_url, "HEAVY_SEARCH": "local", "HEAVY_PRICE_PER_MTOK_PROMPT": "3",
                        "HEAVY_PRICE_PER_MTOK_COMPLETION": "15"}
    argv = [sys.executable, "-m", "heavy.cli", "ask", "Who directed Sinister?", "--trajectories", "2", "--backend",
            "openai", "--index", str(tmp_path / "corpus.sqlite"), "--json", str(out), *(options or ["--no-live"])]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), out


def _wait_held(holds: Holds, count: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while len(holds.held) < count:
        assert process.poll() is None and time.monotonic() < deadline, f"only {len(holds.held)} requests held"
        time.sleep(0.05)


@pytest.mark.parametrize("holds", [(2, False)], indirect=True)
def test_ctrl_c_finishes_now_with_a_partial_report_of_what_was_found(tmp_path, fake_llm, holds):
    process, out = _ask_in_a_process(tmp_path, fake_llm[0])
    _wait_held(holds, 2, process)  # both trajectories searched and wait for the model
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "finishing now" in output and "Scott Derrickson" in output and "Traceback" not in output
    data = json.loads(out.read_text())
    assert data["status"] == "partial" and data["stop_reason"] == "finish_now" and data["sources"]
    assert {t["stop_reason"] for t in data["trajectories"]} == {"finish_now"}


@pytest.mark.parametrize("holds", [(2, True)], indirect=True)
def test_ctrl_c_twice_cancels_even_while_the_report_is_written(tmp_path, fake_llm, holds):
    process, out = _ask_in_a_process(tmp_path, fake_llm[0])
    _wait_held(holds, 2, process)
    process.send_signal(signal.SIGINT)
    _wait_held(holds, 3, process)  # the report pass waits for the model
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    assert "cancelled: no report" in output and "Sources" not in output and "Traceback" not in output
    data = json.loads(out.read_text())  # no report, but what the job spent and what that cost: charged all the same
    assert (data["status"], data["markdown"], data["sources"]) == ("cancelled", "", [])
    tokens = data["tokens"]
    assert tokens["total"] > 0 and data["cost_usd"] == pytest.approx((tokens["prompt"] * 3 + tokens["completion"] * 15)
                                                                     / 1e6)


@pytest.mark.parametrize("phase", ["heavy.cli.indexed_documents", "heavy.cli.make_backend"])
def test_ctrl_c_before_the_job_starts_cancels_with_exit_130_and_leaves_nothing_running(phase, tmp_path,
                                                                                        monkeypatch):
    # while the corpus was opened or the backend made, typer turned the Ctrl-C into a silent exit 130: no word of
    # it, and the board, drawn as the job was cancelled, still said "researching"
    (tmp_path / "docs.jsonl").write_text(json.dumps(DOCS[0]))
    corpus_add(tmp_path / "docs.jsonl", tmp_path / "corpus.sqlite")
    closed, threads = [], set(threading.enumerate())

    class Backend:
        async def aclose(self):
            closed.append(True)

    def ctrl_c(*args):
        os.kill(os.getpid(), signal.SIGINT)
        return 1 if phase.endswith("indexed_documents") else Backend()

    monkeypatch.setattr(phase, ctrl_c)
    result = CliRunner().invoke(app, ["ask", "q?", "--backend", "openai", "--index", str(tmp_path / "corpus.sqlite"),
                                      "--no-live"])
    assert result.exit_code == 130 and "cancelled: no report" in result.output, result.output
    assert "researching" not in result.output and "Traceback" not in result.output
    assert set(threading.enumerate()) <= threads  # the corpus's page server stopped
    assert closed == ([True] if phase.endswith("make_backend") else [])


def test_a_job_whose_model_is_unreachable_ends_on_the_board_and_an_error_line(tmp_path, monkeypatch):
    with socket.socket() as closed:  # a loopback port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("HEAVY_LLM_MAX_RETRIES", "0")
    process, out = _ask_in_a_process(tmp_path, f"http://127.0.0.1:{port}/v1", "--live")  # piped: the board once
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 1, output
    assert output.count("heavy: trajectories") == 1 and "researching" not in output  # it said so above the error
    *_, stage, error = output.rstrip().splitlines()
    assert stage == "failed" and error.startswith("error: AllTrajectoriesFailed: all 2 trajectories failed"), output
    assert "Traceback" not in output and not out.exists()


def test_ask_reports_a_missing_index_in_one_line(tmp_path):
    result = CliRunner().invoke(app, ["ask", "q?", "--backend", "openai", "--index", str(tmp_path / "none.sqlite"),
                                      "--no-live"])
    assert result.exit_code == 1 and "no corpus index" in result.output


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
