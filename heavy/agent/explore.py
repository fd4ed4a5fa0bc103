"""What the loop runs instead of a repeated search or page: the next page the searches listed that the trajectory
has not opened, or a search for a part of the question it has not searched.

Measured on the HotpotQA eval (fresh runs at `470d3cb`): 44% of a weak model's searches and page openings repeat one
it made before, mostly the page it has just read or the question it has already searched. Told so, it repeats again
or answers. Each repeat spent one of its few steps on nothing; run in its place, the next unopened result or an
unsearched name of the question reaches the pages a second hop needs (the second entity of a comparison, the person
a bridge question names). The model is told what ran instead (see `prompts.REPEATED_CALL_REPLACED`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from heavy.agent.openings import focus_parts
from heavy.llm.types import ToolCall

SEARCH_TOOL = "search"
OPEN_TOOL = "open_page"


def call_signature(call: ToolCall) -> str:
    """One key per call: what makes two calls the same. A search's words count without their case and spacing; a
    program's and a URL's count as written (indentation is Python's syntax, a URL's path is case-sensitive)."""
    def norm(value):
        return " ".join(value.lower().split()) if isinstance(value, str) and call.name == SEARCH_TOOL else value

    return call.name + json.dumps({k: norm(v) for k, v in call.arguments.items()}, sort_keys=True, default=str)


def unexplored_call(repeated: ToolCall, question: str, tools: Iterable[str], seen_calls: set[str],
                    listed_urls: Iterable[str]) -> ToolCall | None:
    """A call to run in place of `repeated` (a search or open_page the trajectory made before), under its id:
    first of the same kind, then of the other. Pages: those `listed_urls` holds (the gathered sources, in the
    order the searches listed them first) not yet opened. Searches: the question's parts (`focus_parts`) not yet
    searched. None when `repeated` is another tool, or nothing is left that the job's `tools` may run."""
    if repeated.name not in (SEARCH_TOOL, OPEN_TOOL):
        return None
    tools = set(tools)
    pages = [ToolCall(id=repeated.id, name=OPEN_TOOL, arguments={"url": url}) for url in listed_urls]
    searches = [ToolCall(id=repeated.id, name=SEARCH_TOOL, arguments={"query": part})
                for part in focus_parts(question)]
    order = pages + searches if repeated.name == OPEN_TOOL else searches + pages
    return next((c for c in order if c.name in tools and call_signature(c) not in seen_calls), None)


def describe(call: ToolCall) -> str:
    """How the model is told which call ran: as it would write it."""
    return f"{call.name}({json.dumps(next(iter(call.arguments.values())), ensure_ascii=False)})"
