"""A trajectory's checkpoint: a whole save (`Keys.checkpoint`), then a log beside it (`Keys.checkpoint_log`) of one
line per later save holding only what that save changed. A trajectory of hundreds of steps, each with a page of
several KB, rewrote its whole transcript (messages, steps, evidence: every page three times) after every step, so a
job wrote O(steps²) bytes to Redis (8 × 300 steps of 10 KB pages: gigabytes); an appended line is the size of its
step.

The log is a key of its own, so the whole save's key keeps the one-line JSON that workers from before the log
(d97dcf0 and earlier) read and write. Such a worker taking a job over (a rolling update, a rollback) continues each
trajectory from its whole save: a result, or the state at the first save of the run that began the log. (Lines
appended to that key made it unreadable to them: the job failed to resume at every claim, and could not be given
up either.) A whole save names its log (`log`, new for each) and every line of it carries that name: the fold
takes only the lines of the whole save it starts from, so when an older worker writes a whole save (it knows
nothing of the log), that save wins over the lines of the run before it.

A change line (`is_change`) carries, besides the values it sets:
- `append`: items added to the state's lists, each at the position `at` names for its list when it names one, so a
  line written twice (a retried write whose reply was lost) still adds its items once;
- `update`: entries set in the state's maps."""

from __future__ import annotations

import json
from typing import Any


def is_change(data: dict[str, Any]) -> bool:
    return "append" in data or "update" in data


def with_change(state: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """`state` (changed in place) after one change line."""
    at = change.get("at", {})
    for field, items in change.get("append", {}).items():
        listed = state.setdefault(field, [])
        if field in at:
            del listed[at[field]:]
        listed.extend(items)
    for field, entries in change.get("update", {}).items():
        state.setdefault(field, {}).update(entries)
    state.update((field, value) for field, value in change.items() if field not in ("at", "append", "update"))
    return state


def folded(whole: str, log: str | None) -> dict[str, Any]:
    """The state a trajectory's checkpoint ends at: its whole save, then the lines of its log."""
    state = json.loads(whole)
    for line in filter(None, (log or "").split("\n")):  # JSON escapes every newline inside a value
        change = json.loads(line)
        if change["log"] == state.get("log"):  # else a line of an earlier whole save's log
            with_change(state, change)
    return state
