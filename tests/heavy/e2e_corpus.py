"""The small local corpus and question the end-to-end tests on the embedded model share."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from heavy.agent import TrajectoryLimits, TrajectorySpec
from heavy.corpus.commands import corpus_add
from heavy.llm.types import Sampling
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


def one_search_trajectory(job_id: str) -> TrajectorySpec:
    """QUESTION as one greedy trajectory with search only and a budget small enough for a 2-core CPU."""
    limits = TrajectoryLimits(max_steps=2, step_tokens=64, final_answer_tokens=16, context_tokens=4096)
    return TrajectorySpec(job_id=job_id, index=0, question=QUESTION, allowed_tools=frozenset({"search"}),
                          sampling=Sampling(temperature=0.0), limits=limits)


@contextmanager
def small_corpus_tools(folder: Path, port: int = 0) -> Iterator[ToolExecutor]:
    """DOCS indexed under `folder`, searchable and served on loopback (`port`, 0: any) while the context is open."""
    (folder / "docs.jsonl").write_text("\n".join(json.dumps(d) for d in DOCS))
    corpus_add(folder / "docs.jsonl", folder / "index.sqlite")
    with local_corpus_tools(folder / "index.sqlite", port=port) as tools:
        yield tools
