"""How many of a long file's page addresses an edit changes: random sentence edits (one inserted, deleted or with a
word changed, at a random place) of long files, each cut into parts before and after the edit, by the cutting of
session 46 (old) and the current one (new), side by side. A part whose text is unchanged keeps its address
(heavy/corpus/writes.py), so an edit changes the address of each old part whose text is no part any more: at least
the one it falls in, and the next one too when it moves a cut.

The files: this repository's README.md and docs/*.md, the long topics of Python's reference (pydoc_data, plain text)
and any --files (HTML, Markdown, text, read as `corpus add` reads them), those longer than two parts.

    python scripts/bench_part_edits.py [--edits 2000] [--seed 1] [--files FILE ...]
"""

from __future__ import annotations

import argparse
import random
import re
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from heavy.corpus import documents
from heavy.corpus.documents import _HEADING, _file_document, _pieces, _split

REPO = Path(__file__).resolve().parent.parent
SENTENCE_END = re.compile(r"(?<=[.!?])[ \n]+")
EDITS = ("insert", "delete", "modify")


def old_split(text: str) -> list[str]:
    """Session 46's cutting: a piece picked by the hash of all its text, a part cut just before a piece that would
    overflow it."""
    def starts_part(piece: str) -> bool:
        return bool(_HEADING.match(piece)) or zlib.crc32(piece.encode()) < len(piece) / documents.CUT_SPACING * 2**32

    parts, start, end = [], 0, 0
    for piece_start, piece_end in _pieces(text, 0, len(text), documents._PART_BREAKS):
        if end > start and (piece_end - start > documents.PART_CHARS or end - start >= documents.MIN_PART_CHARS
                            and starts_part(text[piece_start:piece_end].strip())):
            parts.append(text[start:end].strip())
            start = piece_start
        end = piece_end
    return [*parts, text[start:end].strip()]


def long_texts(files: list[Path]) -> list[str]:
    from pydoc_data.topics import topics

    named = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *files]
    texts = [document.text for file in named for document in _file_document(file)] + list(topics.values())
    return [text.strip() for text in texts if len(text) > 2 * documents.PART_CHARS]


def edited(text: str, rng: random.Random, sentences: list[str]) -> str:
    """`text` with one sentence inserted before, deleted at, or a word changed in, the sentence at a random place."""
    starts = [0, *(found.end() for found in SENTENCE_END.finditer(text))]
    at = rng.choice(starts)
    after = SENTENCE_END.search(text, at)
    end = after.end() if after else len(text)
    kind = rng.choice(EDITS)
    if kind == "insert":
        return f"{text[:at]}{rng.choice(sentences)} {text[at:]}"
    if kind == "delete":
        return text[:at] + text[end:]
    words = text[at:end].split(" ")
    words[rng.randrange(len(words))] = rng.choice(("often", "never", "twice", "later"))
    return text[:at] + " ".join(words) + text[end:]


def changed_addresses(split: Callable[[str], list[str]], before: str, after: str) -> int:
    return len(set(split(before)) - set(split(after)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edits", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--files", type=Path, nargs="*", default=[])
    args = parser.parse_args()
    texts = long_texts(args.files)
    sentences = [s for text in texts for s in SENTENCE_END.split(text) if 40 < len(s) < 200 and "\n" not in s]
    rng = random.Random(args.seed)
    trials = [(text, edited(text, rng, sentences)) for text in (rng.choice(texts) for _ in range(args.edits))]
    cuttings = {"old": old_split, "new": _split}
    counts = {name: Counter(changed_addresses(split, *trial) for trial in trials) for name, split in cuttings.items()}
    parts = {name: [part for text in texts for part in split(text)] for name, split in cuttings.items()}

    print(f"{args.edits} random sentence edits of {len(texts)} long texts ({sum(map(len, texts)):,} characters)")
    print(f"{'':36}{'old':>10}{'new':>10}")
    rows = {"edits changing 1 address": lambda c: c[1], "edits changing 2 addresses": lambda c: c[2],
            "edits changing 3 or more": lambda c: sum(n for k, n in c.items() if k >= 3)}
    for label, count in rows.items():
        print(f"{label:36}" + "".join(f"{count(counts[name]) / args.edits:>10.1%}" for name in cuttings))
    print(f"{'addresses changed per edit, mean':36}" + "".join(
        f"{sum(k * n for k, n in counts[name].items()) / args.edits:>10.3f}" for name in cuttings))
    print(f"{'parts':36}" + "".join(f"{len(parts[name]):>10}" for name in cuttings))
    print(f"{'part length, mean':36}" + "".join(f"{sum(map(len, parts[n])) // len(parts[n]):>10}" for n in cuttings))
    print(f"{'part length, max':36}" + "".join(f"{max(map(len, parts[name])):>10}" for name in cuttings))
    same = len(set(parts["old"]) & set(parts["new"]))
    print(f"parts the new cutting cuts as the old did: {same} of {len(parts['new'])} (the others move once, on the "
          f"first add after the change)")


if __name__ == "__main__":
    main()
