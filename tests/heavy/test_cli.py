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
from contextlib import asynccontextmanager, nullcontext
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from heavy.cli import _print_dropped, app, main
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
    env = os.environ | {"HEAVY_OPENAI_BASE_URL": base_url, "HEAVY_SEARCH": "local"}
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
    assert not out.exists()


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


def test_ask_refuses_an_empty_question_in_one_line():
    result = CliRunner().invoke(app, ["ask", "   ", "--backend", "openai"])
    assert result.exit_code == 2 and "question is empty" in result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, ValueError)


@pytest.mark.parametrize("argv, env, message", [
    (["corpus", "add", "/nonexistent/docs"], {}, "error: FileNotFoundError: corpus path does not exist"),
    (["corpus", "serve", "--index", "/nonexistent/index.sqlite"], {}, "error: FileNotFoundError: no corpus index at"),
    (["corpus", "add", "{bad}"], {}, "error: CorpusFormatError: {bad}:1: not valid JSON"),
    (["ask", "q?"], {"HEAVY_TRAJECTORIES": "many"}, "error: HEAVY_TRAJECTORIES: Input should be a valid integer"),
    # httpx refused these while the client was made, outside the one-line handling: InvalidURL, UnicodeEncodeError
    (["jobs", "--url", "http://[::1", "list"], {}, "error: not a usable --url / --key"),
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


def test_live_board_follows_the_events():
    from rich.console import Console

    from heavy.display import LiveBoard
    from heavy.events import Aggregating, ToolCallEvent, ToolResultEvent, TrajectoryDone, TrajectoryStep

    board = LiveBoard(2)
    board.apply(TrajectoryStep(job_id="j", trajectory=1, step=3, action="search", thought="", prompt_tokens=10,
                               completion_tokens=5, total_tokens=1500))
    board.apply(ToolCallEvent(job_id="j", trajectory=1, step=3, call_id="c", tool="search",
                              arguments={"query": "ed wood"}))
    board.apply(ToolResultEvent(job_id="j", trajectory=1, step=3, call_id="c", tool="search", ok=True, chars=9,
                                truncated=False, sources=[{"url": "a"}, {"url": "b"}]))
    board.apply(TrajectoryDone(job_id="j", trajectory=0, answer="yes", confidence=0.5, stop_reason="answered",
                               steps=2, total_tokens=900, cited=[]))
    board.apply(Aggregating(job_id="j", done=2, stopped=0, reason="all_done"))
    console = Console(width=120, record=True)
    console.print(board.render())
    text = console.export_text()
    assert "search(ed wood)" in text and "1,500" in text and "answer: yes" in text
    assert "aggregating (all_done)" in text and board.lanes[1].sources == 2
    # seen at 80 columns (heavy ask's output to a file): a long answer squeezed the other columns to "…"
    board.apply(TrajectoryDone(job_id="j", trajectory=0, answer="The with statement wraps a block " * 4,
                               confidence=0.5, stop_reason="no_progress", steps=7, total_tokens=22442, cited=[]))
    narrow = Console(width=80, record=True)
    narrow.print(board.render())
    narrow_text = narrow.export_text()
    assert "no_progress" in narrow_text and "22,442" in narrow_text


def test_ask_without_a_corpus_uses_pythons_reference_topics_as_heavy_up_does(tmp_path, monkeypatch):
    monkeypatch.setenv("HEAVY_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HEAVY_CORPUS_INDEX", raising=False)
    monkeypatch.setenv("HEAVY_SEARCH", "local")
    monkeypatch.setattr("heavy.up.default_index_path", lambda: tmp_path / "none.sqlite")
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


def test_keys_create_prints_only_the_key_on_stdout(redis_url, monkeypatch):
    """`KEY=$(heavy keys create acme)` (as deploy/README.md has it) captures the key alone; its id goes to stderr."""
    monkeypatch.setenv("HEAVY_REDIS_URL", redis_url)
    get_settings.cache_clear()
    tenant = f"cli-[/x]-{os.getpid()}-{time.monotonic_ns()}"  # brackets: a name, not rich markup
    try:
        created = CliRunner().invoke(app, ["keys", "create", tenant, "--name", "ci"])
    finally:
        get_settings.cache_clear()
    assert created.exit_code == 0, created.output
    assert re.fullmatch(r"hv_\S+\n", created.stdout), created.stdout
    assert f"for tenant {tenant}" in created.stderr


def test_worker_without_a_corpus_searches_pythons_reference_topics_as_heavy_up_does(tmp_path, monkeypatch,
                                                                                      redis_url):
    """`heavy serve & heavy worker` is `heavy up` as separate processes: on a machine where no `heavy corpus add`
    has run, the worker searches the same corpus rather than failing for want of one."""
    monkeypatch.setenv("HEAVY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HEAVY_REDIS_URL", redis_url)
    monkeypatch.delenv("HEAVY_CORPUS_INDEX", raising=False)
    monkeypatch.setenv("HEAVY_SEARCH", "local")
    monkeypatch.setattr("heavy.up.default_index_path", lambda: tmp_path / "none.sqlite")
    get_settings.cache_clear()
    searched = []

    @asynccontextmanager
    async def capture(settings, url, index_path):
        searched.append(index_path)
        raise RuntimeError("captured")
        yield

    monkeypatch.setattr("heavy.toolbox.service_tools", capture)
    try:
        result = CliRunner().invoke(app, ["worker"])
    finally:
        get_settings.cache_clear()
    assert str(result.exception) == "captured", result.output
    assert searched == [tmp_path / "home" / "corpus" / "python-reference.sqlite"]
    assert searched[0].is_file()


def test_heavy_up_prints_its_key_on_the_line_that_names_it_even_off_a_terminal(monkeypatch):
    """`heavy up > up.log &`: the API key stays on the `API key:` line (rich wraps at 80 columns off a terminal)."""
    line = f"dashboard: http://127.0.0.1:8765/   API key: hv_{'k' * 43}"
    monkeypatch.setattr("heavy.up.up", lambda settings, *, index, api_key_file, announce: announce(line))
    result = CliRunner().invoke(app, ["up"])
    assert result.exit_code == 0, result.output
    assert line in result.stdout.splitlines()


def test_live_board_shows_a_models_brackets_as_written():
    # a cell's str was read as rich markup: "[/2]" in a python call raised MarkupError, "[int]" vanished
    from rich.console import Console

    from heavy.display import LiveBoard
    from heavy.events import ToolCallEvent, TrajectoryDone

    board = LiveBoard(2)
    board.apply(ToolCallEvent(job_id="j", trajectory=0, step=1, call_id="c", tool="python",
                              arguments={"code": "print(x[/2])"}))
    board.apply(TrajectoryDone(job_id="j", trajectory=1, answer="[bold]list[int][/bold]", confidence=0.5,
                               stop_reason="answered", steps=2, total_tokens=900, cited=[]))
    console = Console(width=120, record=True)
    console.print(board.render())
    text = console.export_text()
    assert "python(print(x[/2]))" in text and "answer: [bold]list[int][/bold]" in text


def test_tables_of_jobs_and_keys_show_brackets_as_written(redis_url, monkeypatch):
    # a question or key name was read as rich markup on a terminal: "[/x]" raised MarkupError, "[x]" vanished
    from rich.console import Console

    from tests.heavy.loopback_server import LoopbackServer

    name = f"ci [/x] [bold]{time.monotonic_ns()}"
    job = {"id": "j1", "status": "done", "mode": "report", "tokens": 5, "created_at": 0.0, "question": name}
    page = (200, {"Content-Type": "application/json"}, json.dumps({"total": 1, "jobs": [job]}).encode())
    monkeypatch.setenv("HEAVY_REDIS_URL", redis_url)
    get_settings.cache_clear()
    try:
        assert CliRunner().invoke(app, ["keys", "create", "acme-brackets", "--name", name]).exit_code == 0
        with LoopbackServer({"/v1/jobs?limit=20": page}) as api:
            for module, argv in (("heavy.client_cli", ["jobs", "--url", api.base_url, "list"]),
                                 ("heavy.service_cli", ["keys", "list"])):
                terminal = Console(force_terminal=True, width=200, record=True)
                monkeypatch.setattr(f"{module}.console", terminal)
                result = CliRunner().invoke(app, argv)
                assert result.exit_code == 0, result.output
                assert name in terminal.export_text(), module
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize("argv", [["serve", "--port", "70000"], ["up", "--port", "-5"],
                                  ["corpus", "serve", "--port", "99999"]])
def test_a_port_out_of_range_is_refused_before_anything_starts(argv, monkeypatch):
    # bind() raised OverflowError as a traceback, `heavy up` only after starting Redis, Ray and the model
    started = []
    monkeypatch.setattr("heavy.embedded_redis.redis_url_for", lambda *args: started.append(args))
    monkeypatch.setattr("heavy.up.up", lambda *args, **kwargs: started.append(args))
    monkeypatch.setattr("heavy.corpus.commands.existing_index", lambda path: started.append(path))
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2 and "Invalid value for '--port'" in result.output and not started


def test_runtime_serve_refuses_a_port_out_of_range_before_loading_a_model():
    from runtime.cli import build_parser

    for port in ("70000", "-1", "http"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", "--port", port])
    assert build_parser().parse_args(["serve", "--port", "0"]).port == 0


def test_serve_on_port_0_binds_a_free_port_not_the_default(monkeypatch):
    # `port or settings.api_port` read --port 0 as not given
    bound = []
    monkeypatch.setattr("heavy.embedded_redis.redis_url_for", lambda url, home: nullcontext("redis://test"))
    monkeypatch.setattr("heavy.api.create_app", lambda settings: "app")
    monkeypatch.setattr("uvicorn.run", lambda app, host, port, log_level: bound.append(port))
    assert CliRunner().invoke(app, ["serve", "--port", "0"]).exit_code == 0
    assert bound == [0]


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


def test_live_board_in_a_narrow_terminal_keeps_each_lanes_number_action_and_status():
    # at 45 columns the borders and fixed columns took the width: no action, the status cut off; at 30, no "#"
    from rich.console import Console

    from heavy.display import LiveBoard
    from heavy.events import ToolCallEvent, TrajectoryDone

    board = LiveBoard(8)
    board.apply(TrajectoryDone(job_id="j", trajectory=0, answer="yes", confidence=0.5, stop_reason="no_progress",
                               steps=7, total_tokens=22442, cited=[]))
    board.apply(ToolCallEvent(job_id="j", trajectory=7, step=3, call_id="c", tool="search",
                              arguments={"query": "ed wood"}))
    narrow = Console(width=45, record=True)
    narrow.print(board.render())
    lines = narrow.export_text().splitlines()
    assert max(map(len, lines)) <= 45
    assert [line.split()[0] for line in lines[1:9]] == [str(k) for k in range(1, 9)]
    assert "answer: yes" in lines[1] and lines[1].rstrip().endswith("no_progress")
    assert "search(ed wood)" in lines[8] and lines[8].rstrip().endswith("running")


def test_text_from_a_model_reaches_a_terminal_without_control_characters(monkeypatch):
    # rich passes ESC through: a report or tool call holding "\x1b[2J" (a page can hand it to the model) cleared the
    # user's terminal, "\x1b]0;...\x07" set its title
    import io

    from rich.console import Console

    from heavy import display
    from heavy.events import ToolCallEvent

    screen = io.StringIO()
    monkeypatch.setattr(display, "Console", lambda **options: Console(file=screen, force_terminal=True,
                                                                      color_system=None, width=100))
    display.print_report("# Report\n\nHekla \x1b[2Jerupted\x1b]0;owned\x07 in 1991\r\x9b1A.")
    display.print_error("API said \x1b[31mno")
    board = display.LiveBoard(1)
    board.apply(ToolCallEvent(job_id="j", trajectory=0, step=1, call_id="c", tool="search",
                              arguments={"query": "x\x1b[1;1Hy"}))
    display.Console().print(board.render())
    monkeypatch.setattr("heavy.cli.console", display.Console())
    _print_dropped(SimpleNamespace(dropped_claims=["Katla \x1b[2Jerupted"], refuted_claims=[]))
    shown = screen.getvalue()
    assert not any(control in shown for control in ("\x1b", "\x07", "\r", "\x9b")), repr(shown)
    assert "Hekla [2Jerupted]0;owned in 19911A." in shown and "API said [31mno" in shown and "search(x[1;1Hy)" in shown
    assert "Katla [2Jerupted" in shown
