"""`heavy jobs ...`: a running heavy service (`heavy up`, `heavy serve` with workers, a cluster) through its REST API,
from a terminal: submit, list, show, watch (the live board `heavy ask` draws, fed by the job's SSE stream, which
resumes from the last event after a dropped connection), report, cancel, finish now, delete.

The service and the key come from `--url` / `--key` or HEAVY_API_URL / HEAVY_API_KEY.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import time
from collections.abc import Iterator
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from heavy.cli_options import ModeOption, ToolOption
from heavy.display import LiveBoard, local_minute, print_error, print_report, terminal_safe
from heavy.events import event_from_dict
from heavy.retry_after import retry_after_seconds
from heavy.store.records import TERMINAL_EVENTS

console = Console()
board_console = Console(stderr=True)  # the live board, as `heavy ask`'s: `watch ... > report.md` keeps only the report
jobs_app = typer.Typer(help="Jobs on a running heavy service, through its REST API.", no_args_is_help=True)
RECONNECTS = 5  # a watch resumes this many times in a row after its stream dropped (or was refused for a while)
RETRY_AFTER_MAX_S = 60.0  # the longest a watch waits on a Retry-After before trying again
SSE_READ_TIMEOUT_S = 60.0  # the API pings every 15 s while a job is quiet


class ApiError(Exception):
    """What the API refused (its status and message) or why it could not be reached."""


class Api:
    def __init__(self, url: str, key: str | None) -> None:
        key = (key or "").strip()  # read from a file with its newline (as the dashboard trims a pasted one)
        if not key.isprintable():  # refused by h11 as it sent, which said "cannot reach" and showed the key
            raise ApiError("not a usable --key / HEAVY_API_KEY: it holds a control character")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.url = url.rstrip("/")
        try:
            self.client = httpx.Client(base_url=self.url, headers=headers,
                                       timeout=httpx.Timeout(30.0, read=SSE_READ_TIMEOUT_S))
        except (httpx.InvalidURL, UnicodeEncodeError) as exc:  # a mistyped URL; a key pasted with a non-ASCII "…"
            raise ApiError(f"not a usable --url / --key (HEAVY_API_URL / HEAVY_API_KEY): {exc}") from exc
        if self.client.base_url.scheme not in ("http", "https"):  # `localhost:8080`: httpx took the host for one
            raise ApiError(f"--url / HEAVY_API_URL {url!r}: give the service as http://HOST:PORT (or https://)")

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiError(f"cannot reach the heavy API at {self.url}: {exc}") from exc
        if response.is_error:
            raise ApiError(_error_message(response))
        if response.is_redirect:  # not followed: a POST or DELETE would arrive as a GET, or not at all
            raise ApiError(f"{self.url}{path} answered {response.status_code}, moved to "
                           f"{response.headers['location']}: give --url as where the service is now")
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """The API's JSON answer: what is not JSON came from another server (a wrong --url)."""
        response = self.call(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ApiError(f"{self.url}{path} answered {response.status_code} with {_not_json(response)}, not the "
                           "heavy API's JSON: is --url the service?") from None

    def events(self, job_id: str, after: int = 0) -> Iterator[dict[str, Any]]:
        """The job's events from after `after` until its terminal one; a dropped stream is resumed from the last
        event received (Last-Event-ID), as the dashboard does."""
        drops = 0
        while True:
            try:
                with self.client.stream("GET", f"{_job_path(job_id)}/events",
                                        headers={"Last-Event-ID": str(after)}) as response:
                    if response.is_error:
                        response.read()
                        wait_s = _retry_after_s(response)
                        if wait_s is None or drops >= RECONNECTS:
                            raise ApiError(_error_message(response))
                        drops += 1  # at the tenant's stream cap, or the store away a moment: as told, then again
                        board_console.print(Text(terminal_safe(f"{_error_message(response)}: trying again in "
                                                               f"{wait_s:.0f} s")), style="dim")
                        time.sleep(wait_s)
                        continue
                    for event in _sse_events(response.iter_lines()):
                        after, drops = event["seq"], 0
                        yield event
                        if event["type"] in TERMINAL_EVENTS:
                            return
                # the API ended the stream: the key was revoked or the job deleted meanwhile (this call raises
                # why), or the job ended before a terminal event we did not get
                self.call("GET", _job_path(job_id))
                return
            except httpx.TransportError as exc:
                drops += 1
                if drops > RECONNECTS:
                    raise ApiError(f"the event stream of job {job_id} dropped {drops} times in a row: {exc}") from exc
                time.sleep(min(2.0 ** drops / 4, 5.0))


def _error_message(response: httpx.Response) -> str:
    wait_s = retry_after_seconds(response.headers.get("retry-after"))
    retry = f" (retry after {wait_s:.0f} s)" if wait_s is not None else ""
    try:
        error = response.json()["error"]
        return f"{response.status_code} {error['code']}: {error['message']}{retry}"
    except (ValueError, KeyError, TypeError):
        return f"{response.status_code}: {_not_json(response)}{retry}"


def _not_json(response: httpx.Response) -> str:
    """A body that is not the heavy API's JSON, in one line: a web page (another server at --url, a proxy's error
    page) by its title rather than its markup."""
    text = response.text
    if "html" not in response.headers.get("content-type", "") and not text.lstrip().startswith("<"):
        return " ".join(text.split())[:200]
    title = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    return f"a web page {' '.join(title.group(1).split())[:100]!r}" if title else "a web page"


def _retry_after_s(response: httpx.Response) -> float | None:
    """How long to wait before asking again, when a 429 or 503 says (up to RETRY_AFTER_MAX_S)."""
    wait_s = retry_after_seconds(response.headers.get("retry-after"))
    if response.status_code not in (429, 503) or wait_s is None:
        return None
    return min(wait_s, RETRY_AFTER_MAX_S)


def _sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The `data` of each Server-Sent Event (comments and pings skipped)."""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield json.loads("\n".join(data))
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))


def _job_path(job_id: str) -> str:
    """The job's URL path: an id is one segment (`../keys` is not read as another of the API's paths)."""
    return f"/v1/jobs/{quote(job_id, safe='')}"


def _api(ctx: typer.Context) -> Api:
    return ctx.obj


@jobs_app.callback()
def connect(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(envvar="HEAVY_API_URL", help="the service")] = "http://127.0.0.1:8080",
    key: Annotated[str | None, typer.Option(envvar="HEAVY_API_KEY", help="an API key (`heavy keys create`)")] = None,
) -> None:
    ctx.obj = _run(lambda: Api(url, key))


def _run(action) -> Any:
    """Run one API action; what the API refused is one line and exit code 1."""
    try:
        return action()
    except ApiError as exc:
        print_error(str(exc))
        raise typer.Exit(1) from exc


@jobs_app.command("submit")
def submit(
    ctx: typer.Context,
    question: str,
    trajectories: Annotated[int | None, typer.Option(min=1, max=8, help="parallel trajectories")] = None,
    mode: Annotated[ModeOption | None, typer.Option(help="report or answer (default: the service's HEAVY_MODE)")]
    = None,
    max_steps: Annotated[int | None, typer.Option(min=1, help="steps per trajectory")] = None,
    step_tokens: Annotated[int | None, typer.Option(min=16, help="completion tokens per step")] = None,
    tools: Annotated[list[ToolOption] | None, typer.Option("--tool", help="a tool the trajectories may use; "
                                                                          "repeat for several")] = None,
    job_tokens: Annotated[int | None, typer.Option(min=256, help="tokens for the whole job")] = None,
    deadline: Annotated[float | None, typer.Option(min=1, help="seconds until the job reports what it has")] = None,
    priority: Annotated[int | None, typer.Option(min=-10, max=10, help="lower is served first on a shared "
                                                                       "model server")] = None,
    review: Annotated[bool, typer.Option("--review", help="hold it with its plan until `heavy jobs approve`")] = False,
    watch_it: Annotated[bool, typer.Option("--watch", help="follow it live, then print its report")] = False,
) -> None:
    """Submit a research job; prints its id (with --watch, on stderr: follows it and prints the report)."""
    body = {"question": question, "mode": mode and mode.value, "trajectories": trajectories, "max_steps": max_steps,
            "step_tokens": step_tokens, "job_tokens": job_tokens, "deadline_s": deadline,
            "tools": [t.value for t in tools] if tools else None, "priority": priority, "review": review or None}
    job = _run(lambda: _api(ctx).json("POST", "/v1/jobs", json={k: v for k, v in body.items() if v is not None}))
    typer.echo(job["id"], err=watch_it)  # watched: stdout is the report's
    if watch_it:
        watch(ctx, job["id"])


@jobs_app.command("list")
def list_jobs(ctx: typer.Context, limit: Annotated[int, typer.Option(min=1, max=100)] = 20,
              status: Annotated[str | None, typer.Option(help="only these statuses, comma-separated "
                                                              "(active: all unended)")] = None,
              cursor: Annotated[str | None, typer.Option(help="where the page is: the one the previous list "
                                                              "named for older jobs")] = None) -> None:
    """Your jobs, newest first: a table on a terminal, tab-separated lines otherwise (for scripts); while older jobs
    follow, stderr says how to list them (a cursor, which holds its place as jobs are submitted or deleted)."""
    params = {"limit": limit, **({"status": status} if status else {}), **({"cursor": cursor} if cursor else {})}
    page = _run(lambda: _api(ctx).json("GET", "/v1/jobs", params=params))
    links = page.get("links", {})  # an API older than cursors links pages by offset (fec072a), or not at all (b74daab)
    if cursor and not _cursor_in(links.get("self", "")):  # it ignored the cursor: its page is the newest, not cursor's
        print_error("this heavy API is older than --cursor (it listed the newest jobs instead): list without it, "
                    "with a larger --limit (up to 100)")
        raise typer.Exit(1)
    rows = [(job["id"], job["status"], job["mode"], str(job["tokens"]),
             local_minute(job["created_at"]), job["question"])
            for job in page["jobs"]]
    if not console.is_terminal:
        for row in rows:
            typer.echo("\t".join(row))
    else:
        table = Table(title=f"{page['total']} job(s)")
        for column in ("id", "status", "mode", "tokens", "created"):  # whole: an id is what the other commands take
            table.add_column(column, no_wrap=True)
        table.add_column("question", overflow="fold")
        for row in rows:
            # a question's "[/x]" is text, not markup (which raised); its control characters are not obeyed
            table.add_row(*(Text(terminal_safe(cell)) for cell in row))
        console.print(table)
    if older := _cursor_in(links.get("next", "")):  # none from an older API: no hint then
        options = f" --limit {limit}" * (limit != 20) + f" --status {shlex.quote(status)}" * bool(status)
        board_console.print(f"older jobs: heavy jobs list{options} --cursor {older}", style="dim", soft_wrap=True)


def _cursor_in(link: str) -> str:
    """The `cursor` a page link carries ("" when it has none)."""
    return parse_qs(urlsplit(link).query).get("cursor", [""])[0]


@jobs_app.command("show")
def show(ctx: typer.Context, job_id: str) -> None:
    """A job's state as JSON."""
    typer.echo(json.dumps(_run(lambda: _api(ctx).json("GET", _job_path(job_id))), indent=2))


@jobs_app.command("watch")
def watch(ctx: typer.Context, job_id: str) -> None:
    """Follow a job live (one lane per trajectory), then print its report (exit code 1 when it ended without one)."""
    api = _api(ctx)
    job = _run(lambda: api.json("GET", _job_path(job_id)))
    board = LiveBoard(job["params"]["trajectories"])
    drawn = Live(board.render(), console=board_console) if board_console.is_terminal else contextlib.nullcontext()
    with drawn as live:
        board.live = live
        _run(lambda: _follow(api, job_id, board))
    if live is None:  # not a terminal: the board once, as it ended
        board_console.print(board.render())
    if not board.stage.startswith("report ready"):  # a script's `watch && publish` must not go on
        print_error(f"job {job_id} {'was cancelled' if board.stage == 'cancelled' else board.stage}: no report")
        raise typer.Exit(1)
    report(ctx, job_id)


def _follow(api: Api, job_id: str, board: LiveBoard) -> None:
    for data in api.events(job_id):
        if data["type"] in ("job_failed", "job_cancelled"):
            board.stage = data["type"].removeprefix("job_") + (f": {data['error']}" if data.get("error") else "")
        elif data["type"] == "report_ready":  # told in full below when this client can read the event
            board.stage = "report ready"
        with contextlib.suppress(ValueError, TypeError):  # an event of a newer service than this client: not drawn
            board.apply(event_from_dict({k: v for k, v in data.items() if k != "seq"}))
        if board.live is not None:
            board.live.update(board.render())


@jobs_app.command("report")
def report(ctx: typer.Context, job_id: str,
           as_json: Annotated[bool, typer.Option("--json", help="the JSON result instead of the Markdown")] = False,
           ) -> None:
    """A finished job's report: Markdown (rendered on a terminal, as written otherwise), or its JSON result."""
    accept = "application/json" if as_json else "text/markdown"
    text = _run(lambda: _api(ctx).call("GET", f"{_job_path(job_id)}/report", headers={"Accept": accept}).text)
    if as_json:
        typer.echo(text)
    else:
        print_report(text)


def _control(ctx: typer.Context, job_id: str, action: str) -> None:
    job = _run(lambda: _api(ctx).json("POST", f"{_job_path(job_id)}/{action}"))
    asked = f" ({job['control']} requested)" if job.get("control") else ""
    typer.echo(f"{job['id']}: {job['status']}{asked}")


@jobs_app.command("cancel")
def cancel(ctx: typer.Context, job_id: str) -> None:
    """Cancel a job (no report)."""
    _control(ctx, job_id, "cancel")


@jobs_app.command("finish")
def finish(ctx: typer.Context, job_id: str) -> None:
    """Stop a running job's trajectories and have it report what they found."""
    _control(ctx, job_id, "finish")


@jobs_app.command("approve")
def approve(ctx: typer.Context, job_id: str) -> None:
    """Run a job held for review (`submit --review`) after reading its plan (`show`)."""
    _control(ctx, job_id, "approve")


@jobs_app.command("delete")
def delete(ctx: typer.Context, job_id: str) -> None:
    """Delete an ended job with its events and report."""
    _run(lambda: _api(ctx).call("DELETE", _job_path(job_id)))
    typer.echo(f"{job_id}: deleted")
