"""What the CLI prints: a live view of a job's trajectories, fed by its events (its event sink), and error lines."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.markdown import Markdown
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from heavy.events import Aggregating, Event, ReportReady, ToolCallEvent, ToolResultEvent, TrajectoryDone, TrajectoryStep
from heavy.graphemes import clipped

ACTION_CHARS = 60
# C0 controls but tab and newline, DEL and C1: what a terminal obeys (ESC [2J clears it, ESC ] sets its title...),
# and a fetched page can hand the model to write; rich passes ESC through
TERMINAL_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
NARROW_COLUMNS = 72  # the bordered six-column table needs about this many to show an action


@dataclass
class Lane:
    step: int = 0
    action: str = "starting"
    tokens: int = 0
    sources: int = 0
    status: str = "running"


class LiveBoard:
    """Keeps one lane per trajectory and redraws the table on every event."""

    def __init__(self, trajectories: int, live: Live | None = None) -> None:
        self.lanes = [Lane() for _ in range(trajectories)]
        self.stage = "researching"
        self.live = live

    async def emit(self, event: Event) -> None:
        self.apply(event)
        if self.live is not None:
            self.live.update(self.render())

    def apply(self, event: Event) -> None:
        lane = self.lanes[event.trajectory] if hasattr(event, "trajectory") else None
        if isinstance(event, TrajectoryStep):  # a lane ended by a crash runs again after a takeover: reopened
            lane.step, lane.tokens, lane.action, lane.status = event.step, event.total_tokens, event.action, "running"
        elif isinstance(event, ToolCallEvent):
            args = ", ".join(f"{v}" for v in event.arguments.values())
            lane.action = clipped(f"{event.tool}({args})", ACTION_CHARS)
        elif isinstance(event, ToolResultEvent):
            lane.sources += len(event.sources)
        elif isinstance(event, TrajectoryDone):
            lane.status = event.stop_reason
            lane.tokens = event.total_tokens
            lane.action = clipped(f"answer: {event.answer}" if event.answer else f"error: {event.error}"
                                  if event.error else "no answer", ACTION_CHARS)
        elif isinstance(event, Aggregating):
            self.stage = f"aggregating ({event.reason})"
        elif isinstance(event, ReportReady):
            self.stage = "report ready" + (f" (partial: no findings, {event.report_error})" if event.report_error
                                           else " (partial)" if event.partial else "")

    def render(self) -> LiveBoard:
        """The board as a renderable, laid out when drawn for the width there is then."""
        return self

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        # narrow (a split pane, a phone): no borders and no sources column, or the borders and fixed columns took
        # every column there was, and the action, the status and even the lane's number were cut off
        narrow = options.max_width < NARROW_COLUMNS
        columns = ("#", "step", "current action", "tokens", *(() if narrow else ("sources",)), "status")
        table = Table(title=None if narrow else "heavy: trajectories", expand=True,
                      **({"box": None, "padding": (0, 1), "collapse_padding": True, "pad_edge": False}
                         if narrow else {}))
        for column in columns:
            # the action takes the width the others leave: a long answer had squeezed them to "…" at 80 columns
            flexible = column == "current action"
            table.add_column(column, overflow="ellipsis", no_wrap=True, ratio=1 if flexible else None,
                             min_width=None if flexible else len(column))
        for k, lane in enumerate(self.lanes):
            # Text, not str: a cell's str is read as markup, and a model's "[/2]" in code or an answer raised
            cells = {"#": str(k + 1), "step": str(lane.step), "current action": lane.action,
                     "tokens": f"{lane.tokens:,}", "sources": str(lane.sources), "status": lane.status}
            table.add_row(*(Text(terminal_safe(cells[column])) for column in columns))
        yield table
        yield Text(terminal_safe(self.stage), style="bold")  # a failed job's error (heavy jobs watch)


def local_minute(unix_time: float) -> str:
    """A Unix time as the CLI's tables show it: local, to the minute."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(unix_time))


def terminal_safe(text: str) -> str:
    """`text` without the control characters a terminal would act on."""
    return TERMINAL_CONTROLS.sub("", text)


def print_report(markdown: str) -> None:
    """A report on stdout: rendered on a terminal (without control characters), the Markdown as written to a file
    or a pipe."""
    console = Console()
    if console.is_terminal:
        console.print(Markdown(terminal_safe(markdown)))
    else:
        print(markdown, flush=True)


def print_error(message: str) -> None:
    """One red line on stderr; the message as written (no markup read in it, no numbers coloured)."""
    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(terminal_safe(message))}",
                                               highlight=False)
