"""A trajectory's checkpoint as a log: a whole state, then one line per later save holding only what that save
changed. A trajectory of hundreds of steps, each with a page of several KB, rewrote its whole transcript (messages,
steps, evidence: every page three times) after every step, so a job wrote O(steps²) bytes to Redis (8 × 300 steps
of 10 KB pages: gigabytes); an appended line is the size of its step.

A change line (`is_change`) carries, besides the values it sets:
- `append`: items added to the state's lists, each at the position `at` names for its list when it names one, so a
  line written twice (a retried write whose reply was lost) still adds its items once;
- `update`: entries set in the state's maps.
A checkpoint written before logs existed is one line: a whole state, read as before."""

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


def folded(log: str) -> dict[str, Any]:
    """The state a checkpoint log ends at."""
    first, *changes = log.split("\n")  # JSON escapes every newline inside a value
    state = json.loads(first)
    for line in changes:
        with_change(state, json.loads(line))
    return state
