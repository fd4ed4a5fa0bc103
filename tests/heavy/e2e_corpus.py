"""The small local corpus and question the end-to-end tests on the embedded model share."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from heavy.corpus.commands import corpus_add
from heavy.toolbox import local_corpus_tools
from heavy.tools.base import ToolExecutor

DOCS = [
    {"title": "Scott Derrickson", "text": "Scott Derrickson (born July 16, 1966) is an American director, "
     "screenwriter and producer. He is best known for directing horror films such as Sinister."},
    {"title": "Ed Wood", "text": "Edward Davis Wood Jr. (1924-1978) was an American filmmaker, actor and writer."},
    {"title": "Sinister (film)", "text": "Sinister is a 2012 supernatural horror film directed by Scott Derrickson."},
    {"title": "Woodson, Arkansas", "text": "Woodson is a census-designated place in Pulaski County, Arkansas."},
    {"title": "Tim Burton", "text": "Tim Burton is an American filmmaker who directed Ed Wood (1994)."},
]
QUESTION = "Were Scott Derrickson and Ed Wood of the same nationality?"


@contextmanager
def small_corpus_tools(folder: Path) -> Iterator[ToolExecutor]:
    """DOCS indexed under `folder`, searchable and served on loopback while the context is open."""
    (folder / "docs.jsonl").write_text("\n".join(json.dumps(d) for d in DOCS))
    corpus_add(folder / "docs.jsonl", folder / "index.sqlite")
    with local_corpus_tools(folder / "index.sqlite") as tools:
        yield tools
