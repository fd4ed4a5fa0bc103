"""Markdown tables (GFM) in a report body. A table is a block: its header and delimiter rows are no claims and pass
as written (the header without markers or links, as a heading), and each body row is one claim, checked whole with
its cells' citations (split at full stops, a row would lose its pipes; its delimiter, no claim at all, would be
dropped, and the table shown as text). A table left with no body row says nothing and goes."""

from __future__ import annotations

import re
from collections.abc import Sequence

HEADER, DELIMITER, ROW = "header", "delimiter", "row"
_DELIMITER = re.compile(r"\s*\|?\s*:?-+:?\s*(?:\|\s*:?-+:?\s*)*\|?\s*")
_LAST_PIPE = re.compile(r"\s*\|\s*$")


def table_lines(lines: Sequence[str]) -> dict[int, str]:
    """Index → HEADER, DELIMITER or ROW, for the lines of the tables in `lines`: a line with a pipe followed by a
    delimiter row ("|---|:--:|"), then the lines with a pipe up to a blank line."""
    kinds: dict[int, str] = {}
    i = 0
    while i < len(lines) - 1:
        if "|" in lines[i] and "|" in lines[i + 1] and _DELIMITER.fullmatch(lines[i + 1]):
            kinds[i], kinds[i + 1] = HEADER, DELIMITER
            i += 2
            while i < len(lines) and lines[i].strip() and "|" in lines[i]:
                kinds[i] = ROW
                i += 1
        else:
            i += 1
    return kinds


def without_empty_tables(lines: list[str]) -> list[str]:
    """The lines, less the header and delimiter of a table with no body row left."""
    kinds = table_lines(lines)
    empty = {j for i, kind in kinds.items() if kind == HEADER and kinds.get(i + 2) != ROW for j in (i, i + 1)}
    return [line for i, line in enumerate(lines) if i not in empty]


def row_claim(row: str) -> str:
    """A table row as the sentence it states: its cells, one space apart."""
    return " ".join(cell.strip() for cell in row.strip().strip("|").split("|") if cell.strip())


def with_row_marker(row: str, n: int) -> str:
    """The row with a `[n]` marker at the end of its last cell."""
    last = _LAST_PIPE.search(row)
    return f"{row[:last.start()]} [{n}] |" if last else f"{row.rstrip()} [{n}]"
