"""A local corpus every machine already has: the Python reference topics that ship with CPython
(`pydoc_data.topics`, what `help("break")` shows). Used by `heavy up` when no corpus exists, and by the demo."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from heavy.corpus.commands import AddReport, corpus_add


def build_stdlib_corpus(index_path: Path) -> AddReport:
    """Index every pydoc topic (one document each, titled by its first line) into `index_path`."""
    from pydoc_data.topics import topics

    rows = []
    for _, text in sorted(topics.items()):  # by name, for a stable index
        heading = next(line.strip() for line in text.splitlines() if line.strip())
        rows.append({"title": f"Python reference: {heading}", "text": text})
    index_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=index_path.parent) as folder:  # beside it: os.replace stays on one disk
        source, building = Path(folder) / "pydoc_topics.jsonl", Path(folder) / index_path.name
        source.write_text("\n".join(json.dumps(row) for row in rows))
        report = corpus_add(source, building)
        # whole or not at all: a build cut short (Ctrl-C) left an empty index there, refused by every later start
        os.replace(building, index_path)
        return report
