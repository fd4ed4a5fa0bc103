"""Reading what another version of heavy wrote or sent: the compatibility rule of stored and sent records.

What heavy stores (a job's hash, its checkpoints, events and report, cached pages) or sends (API responses, events,
callbacks) is read by other versions of it: an older worker or client during a rolling upgrade, every older one after
a rollback. So:
- Within a schema version a record only gains fields, each with a default (or read with one: a newer reader of an
  older record finds it missing), and every reader passes over the fields it does not know: `from_known_fields`
  builds the dataclasses (checkpoints' usages, sources and calls, a job's earlier_usage, events, cached pages), the
  rest is read key by key (a job's hash, a report's JSON, the API's responses in `heavy jobs`).
- A field whose meaning changes is a new field, or a bump of the record's schema version (events' `schema_version`,
  the corpus index's), which an older reader refuses with a clear error instead of misreading it.
- Request bodies are the other way round: the API refuses fields it does not know (`JobCreate`), so a misspelt
  option is a 422, not a setting silently ignored.
deploy/README.md ("Upgrading") says what was checked between versions and what a roll or a rollback loses.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


@functools.cache
def _init_fields(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls) if f.init)


def from_known_fields(cls: type[T], data: Mapping[str, Any]) -> T:
    """The dataclass `cls` from a stored or received mapping, passing over the fields `cls` does not know (a newer
    heavy's). A field `cls` needs and `data` lacks still raises TypeError."""
    known = _init_fields(cls)
    return cls(**{name: value for name, value in data.items() if name in known})
