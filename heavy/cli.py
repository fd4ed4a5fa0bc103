"""`heavy` command line: `heavy ask "question"` runs a heavy-mode job with a live view, then prints the report;
`heavy corpus ...` builds and serves the local search corpus."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sqlite3
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import pydantic
import redis
import typer
from pydantic_core import ErrorDetails
from pydantic_settings import SettingsError
from rich.console import Console
from rich.live import Live
from rich.markup import escape

from heavy import __version__
from heavy.aggregate import AggregationConfig, JobResult
from heavy.cli_options import BackendOption, ModeOption, SearchOption, ToolOption
from heavy.client_cli import jobs_app
from heavy.config import get_settings
from heavy.corpus.commands import corpus_app
from heavy.corpus.documents import CorpusFormatError
from heavy.corpus.index import indexed_documents
from heavy.display import LiveBoard, print_error, print_report, terminal_safe
from heavy.llm import make_backend
from heavy.scheduler import JobControl, JobSpec, Scheduler
from heavy.service_cli import register as register_service_commands
from heavy.toolbox import local_corpus_tools, web_tools
from heavy.tools.base import ToolExecutor
from heavy.up import search_index

app = typer.Typer(help="Heavy-mode research: N trajectories merged into one cited report.", no_args_is_help=True)
app.add_typer(corpus_app, name="corpus")
app.add_typer(jobs_app, name="jobs")
register_service_commands(app)  # serve, worker, up, keys, store
console = Console(stderr=True)  # progress, the board, notes: `heavy ask ... > report.md` keeps only the report
# what a user can get wrong: a path, a corpus file, a HEAVY_* setting, a Redis that is not there
# sqlite3.OperationalError: the corpus index's disk is full, or the index is locked by another add
# SettingsError: a HEAVY_* list not written as JSON (HEAVY_ALLOWED_TOOLS=search,python)
USER_ERRORS = (OSError, CorpusFormatError, pydantic.ValidationError, SettingsError, redis.exceptions.ConnectionError,
               sqlite3.OperationalError)


def _print_version(wanted: bool) -> None:
    if wanted:
        typer.echo(f"heavy {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option("--version", help="Print heavy's version and exit.",
                                                   callback=_print_version, is_eager=True)] = False) -> None:
    pass  # the app's own options; its help is the Typer's


def _tools(search: str, index: Path | None) -> AbstractContextManager[ToolExecutor]:
    """The web, or a local corpus: the one given (--index, HEAVY_CORPUS_INDEX), else the one `heavy corpus add`
    builds by default, else, as `heavy up` does, Python's reference topics (built under HEAVY_HOME on first use)."""
    if search == "web":
        console.print("searching the web (ddgs)", style="dim", highlight=False, soft_wrap=True)
        return web_tools()
    index = search_index(get_settings(), index, lambda line: console.print(line, markup=False, highlight=False))
    # said up front: which corpus a job searched is otherwise seen only in its sources' addresses
    console.print(f"searching the local corpus {index} ({indexed_documents(index):,} documents)", style="dim",
                  markup=False, highlight=False, soft_wrap=True)  # a path is not cut in two off a terminal
    return local_corpus_tools(index)


def _on_interrupt(control: JobControl) -> Callable[[], None]:
    """Ctrl-C: the first finishes now (the trajectories stop and what they found is aggregated into a partial
    report), the second cancels (no report)."""
    presses = 0

    def interrupted() -> None:
        nonlocal presses
        presses += 1
        if presses == 1:
            console.print("[yellow]finishing now:[/yellow] the report merges what the trajectories have "
                          "(Ctrl-C again to cancel)")
            control.finish_now(aggregation_too=True)
        else:
            console.print("[yellow]cancelled[/yellow]")
            control.cancel()
    return interrupted


async def _run(spec: JobSpec, backend_name: str, executor: ToolExecutor, show_live: bool) -> JobResult:
    settings = get_settings()
    backend = make_backend(settings, backend_name)
    scheduler = Scheduler(backend, executor, AggregationConfig.from_settings(settings))
    control, loop = JobControl(), asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, _on_interrupt(control))
        watching = True
    except (RuntimeError, ValueError, NotImplementedError):  # not the main thread, or no signals here: Ctrl-C aborts
        watching = False
    try:
        # without a terminal (a file, a pipe) the board is printed once, as it ended
        with Live(console=console, refresh_per_second=4, transient=False) if show_live else nullcontext() as live:
            board = LiveBoard(spec.trajectories, live)
            if live is not None:
                live.update(board.render())
            try:
                return await scheduler.run(spec, sink=board, control=control)
            except Exception:
                board.stage = "failed"  # not left saying "researching" above the error
                raise
            except asyncio.CancelledError:  # a Ctrl-C before the handler above was installed: asyncio.run cancels
                board.stage = "cancelled"
                raise
            finally:
                (live.update if live is not None else console.print)(board.render())
    finally:
        if watching:
            loop.remove_signal_handler(signal.SIGINT)
        await backend.aclose()


@app.command()
def ask(
    question: str,
    trajectories: Annotated[int | None, typer.Option(min=1, max=8, help="parallel trajectories (default "
                                                                       "HEAVY_TRAJECTORIES)")] = None,
    mode: Annotated[ModeOption | None, typer.Option(help="report: cited Markdown; answer: short voted answer "
                                                         "(default HEAVY_MODE)")] = None,
    backend: Annotated[BackendOption | None, typer.Option(help="LLM backend (default HEAVY_BACKEND)")] = None,
    max_steps: Annotated[int | None, typer.Option(min=1, max=300, help="steps per trajectory")] = None,
    deadline: Annotated[float | None, typer.Option(min=1, help="seconds until the job stops and reports what it has "
                                                               "(default HEAVY_JOB_DEADLINE_S)")] = None,
    index: Annotated[Path | None, typer.Option(help="local corpus index (env HEAVY_CORPUS_INDEX)")] = None,
    search: Annotated[SearchOption | None, typer.Option(help="search the local corpus or the web (default "
                                                             "HEAVY_SEARCH)")] = None,
    tools: Annotated[list[ToolOption] | None, typer.Option(
        "--tool", help="a tool the trajectories may use; repeat for several (default HEAVY_ALLOWED_TOOLS)")] = None,
    job_tokens: Annotated[int | None, typer.Option(min=256, help="tokens for the whole job; spent: a partial "
                                                                 "report (default HEAVY_JOB_TOKENS)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the JSON result here")] = None,
    live: Annotated[bool, typer.Option(help="live view of the trajectories")] = True,
) -> None:
    """Research QUESTION with N trajectories and print the merged report.

    Ctrl-C finishes now (a partial report of what the trajectories found); Ctrl-C again cancels."""
    logging.basicConfig(level=logging.WARNING)
    settings = get_settings()
    try:
        given = {"mode": mode and mode.value, "trajectories": trajectories}  # else HEAVY_MODE, HEAVY_TRAJECTORIES
        base = JobSpec.from_settings(settings, job_id=f"cli-{uuid.uuid4().hex[:12]}", question=question,
                                     **{name: value for name, value in given.items() if value is not None})
    except ValueError as exc:  # an empty question, or a setting out of range
        print_error(str(exc))
        raise typer.Exit(2) from exc
    if json_out is not None and (unwritable := _unwritable(json_out)):  # found out now, not after the job ran
        print_error(f"--json {json_out} {unwritable}")
        raise typer.Exit(2)
    search = search.value if search is not None else settings.search
    if search == "web" and index is not None:
        print_error("--index is the local corpus's; the web search has none")
        raise typer.Exit(2)
    limits = replace(base.limits, max_steps=max_steps or base.limits.max_steps,
                     deadline_s=deadline or base.limits.deadline_s)
    allowed = frozenset(t.value for t in tools) if tools else base.allowed_tools
    try:
        with _tools(search, index) as executor:
            spec = replace(base, limits=limits, deadline_s=deadline or base.deadline_s,
                           job_tokens=job_tokens or base.job_tokens, allowed_tools=allowed & executor.names)
            # rich's Live ends without a newline where it does not draw on a terminal
            result = asyncio.run(_run(spec, (backend or settings.backend), executor, live and console.is_terminal))
    except KeyboardInterrupt:  # before the job's own handler (while the corpus is built, the backend made)
        result = None
    except Exception as exc:  # one line for the user
        print_error(f"{type(exc).__name__}: {exc}")
        raise typer.Exit(1) from exc
    if result is None or result.status == "cancelled":
        console.print("[yellow]cancelled:[/yellow] no report")
        if result is not None and json_out is not None:  # what it spent and cost: no report, but charged
            _write_json(json_out, result)
        raise typer.Exit(130)  # as a shell reports a command ended by Ctrl-C
    print_report(result.markdown)
    _print_dropped(result)
    if json_out is not None:
        _write_json(json_out, result)


def _unwritable(path: Path) -> str | None:
    """Why the JSON result could not be written at path, or None."""
    if path.is_dir():
        return "is a folder: name a file in it"
    if not path.parent.is_dir():
        return f"is in a folder that does not exist ({path.parent})"
    if not os.access(path if path.exists() else path.parent, os.W_OK):
        return "may not be written by you"
    return None


def _write_json(path: Path, result: JobResult) -> None:
    path.write_text(result.to_json())
    console.print(f"JSON result written to {path}", markup=False)


def _print_dropped(result: JobResult) -> None:
    """What the claim checks took out of the report, dimmed after it: what a reader was not shown, and why."""
    if not result.dropped_claims:
        return
    count = len(result.dropped_claims)
    console.print(f"[dim]{count} claim{'s' * (count != 1)} taken out of the report (no fetched page supports "
                  f"{'them' if count != 1 else 'it'}):[/dim]")
    for claim in result.dropped_claims:
        refuted = " (the model's check said its page does not say this)" if claim in result.refuted_claims else ""
        console.print(f"[dim]- {escape(terminal_safe(claim))}{refuted}[/dim]", highlight=False)


def main() -> None:
    """The `heavy` command: a user's mistake is one line on stderr and exit code 1, not a traceback."""
    try:
        app()
    except USER_ERRORS as exc:
        print_error(_describe(exc))
        raise SystemExit(1) from None


def _describe(exc: Exception) -> str:
    if isinstance(exc, pydantic.ValidationError):  # a HEAVY_* setting: name it as the user set it
        return "; ".join(map(_describe_setting_error, exc.errors()))
    if isinstance(exc, SettingsError) and (field := re.search(r'field "(\w+)"', str(exc))):
        return f"HEAVY_{field[1].upper()}: not JSON ({exc.__cause__}); a list is written as [\"a\", \"b\"]"
    return f"{type(exc).__name__}: {exc}"


def _describe_setting_error(error: ErrorDetails) -> str:
    if not error["loc"]:  # a check across settings: its input is every setting given, HEAVY_OPENAI_API_KEY included
        return f"HEAVY_* settings: {error['msg'].removeprefix('Value error, ')}"
    return f"HEAVY_{'_'.join(map(str, error['loc'])).upper()}: {error['msg']} (got {error.get('input')!r})"


if __name__ == "__main__":
    main()
