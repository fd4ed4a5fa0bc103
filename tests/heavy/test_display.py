"""What `heavy ask`, `heavy jobs` and `heavy keys` draw on a terminal: the live board of the trajectories, the
tables, and text from a model or a user shown as written, without markup or control characters."""

import json
import time
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from heavy.cli import _print_dropped, app
from heavy.config import get_settings


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


def test_live_board_cuts_a_long_action_between_graphemes():
    # cut by code points, the 60th was inside an emoji family (a man shown) or between "e" and its accent
    from heavy.display import ACTION_CHARS, LiveBoard
    from heavy.events import ToolCallEvent, TrajectoryDone

    family, accented = "👨\u200d👩\u200d👧\u200d👦", "e\u0301"
    board = LiveBoard(2)
    board.apply(ToolCallEvent(job_id="j", trajectory=0, step=1, call_id="c", tool="search",
                              arguments={"query": "长城" * 25 + family * 3}))  # "search(" + 50: the family at 57
    board.apply(TrajectoryDone(job_id="j", trajectory=1, answer="x" + accented * 40, confidence=0.5,
                               stop_reason="answered", steps=2, total_tokens=900, cited=[]))  # "answer: x": 9
    assert board.lanes[0].action == "search(" + "长城" * 25
    assert board.lanes[1].action == "answer: x" + accented * 25 and len(board.lanes[1].action) < ACTION_CHARS


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


@pytest.mark.parametrize(("written", "shown"), [
    ("ci [/x] [bold]", "ci [/x] [bold]"),  # read as rich markup: "[/x]" raised MarkupError, "[x]" vanished
    ("ci \x1b]0;owned\x07 \x1b[2J", "ci ]0;owned [2J"),  # a terminal obeyed them: its title set, the screen cleared
])
def test_tables_of_jobs_and_keys_show_questions_and_names_as_written(redis_url, monkeypatch, written, shown):
    import io

    from rich.console import Console

    from tests.heavy.loopback_server import LoopbackServer

    stamp = str(time.monotonic_ns())
    job = {"id": "j1", "status": "done", "mode": "report", "tokens": 5, "created_at": 0.0, "question": written + stamp}
    page = (200, {"Content-Type": "application/json"}, json.dumps({"total": 1, "jobs": [job]}).encode())
    monkeypatch.setenv("HEAVY_REDIS_URL", redis_url)
    get_settings.cache_clear()
    try:
        assert CliRunner().invoke(app, ["keys", "create", "acme-brackets", "--name", written + stamp]).exit_code == 0
        with LoopbackServer({"/v1/jobs?limit=20": page}) as api:
            for module, argv in (("heavy.client_cli", ["jobs", "--url", api.base_url, "list"]),
                                 ("heavy.service_cli", ["keys", "list"])):
                screen = io.StringIO()
                monkeypatch.setattr(f"{module}.console", Console(file=screen, force_terminal=True,
                                                                 color_system=None, width=200))
                result = CliRunner().invoke(app, argv)
                assert result.exit_code == 0, result.output
                assert shown + stamp in screen.getvalue() and "\x1b" not in screen.getvalue(), module
    finally:
        get_settings.cache_clear()


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


def test_a_failed_jobs_error_under_a_watched_board_loses_its_control_characters():
    # `heavy jobs watch` shows a job_failed event's error (an exception's text, a server's answer in it) under the
    # board: the cells lost their control characters, this line kept them
    import io

    from rich.console import Console

    from heavy.client_cli import _follow
    from heavy.display import LiveBoard

    failed = {"type": "job_failed", "schema_version": 1, "job_id": "j", "ts": 0.0, "seq": 1,
              "error": "LLMError: HTTP 500: \x1b[2Jgone\x1b]0;owned\x07"}
    board = LiveBoard(1)
    _follow(SimpleNamespace(events=lambda job_id: iter([failed])), "j", board)
    screen = io.StringIO()
    Console(file=screen, force_terminal=True, color_system=None, width=100).print(board.render())
    assert "failed: LLMError: HTTP 500: [2Jgone]0;owned" in screen.getvalue() and "\x1b" not in screen.getvalue()


def test_live_board_reopens_a_lane_whose_trajectory_runs_again():
    """A trajectory that crashed (its lane ended, "error") runs again once a worker takes the job over (its
    trajectory_done is written by every attempt): the rerun's steps showed under the old "error" until it ended."""
    from heavy.display import LiveBoard
    from heavy.events import TrajectoryDone, TrajectoryStep

    board = LiveBoard(1)
    board.apply(TrajectoryDone(job_id="j", trajectory=0, answer="", confidence=0.0, stop_reason="error", steps=2,
                               total_tokens=900, cited=[], error="RuntimeError: a parser bug"))
    board.apply(TrajectoryStep(job_id="j", trajectory=0, step=3, action="search", thought="", prompt_tokens=10,
                               completion_tokens=5, total_tokens=1200))
    assert (board.lanes[0].status, board.lanes[0].step, board.lanes[0].action) == ("running", 3, "search")
