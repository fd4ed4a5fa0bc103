"""`heavy ask` end to end without a model: a scripted OpenAI-compatible server on loopback, a real local corpus
(index + page server), real tools, scheduler and aggregator; Ctrl-C. Its options: test_cli_ask_options.py; a user's
mistakes: test_cli_errors.py."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from heavy.cli import app
from heavy.config import get_settings
from heavy.corpus.commands import corpus_add

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
