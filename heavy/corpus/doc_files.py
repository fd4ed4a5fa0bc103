"""`doc_files`: which file holds each document of a corpus index, and where in it (the document's place, see
Document.place), so that re-adding a file replaces what it no longer holds and a document keeps its id, its address,
while its place in the file holds a new text. Made on an index's first write (searching one built before it needs no
write access), from the documents' origins."""

from __future__ import annotations

import hashlib
import re
import sqlite3

from heavy.corpus.documents import jsonl_place

SCHEMA = """
CREATE TABLE IF NOT EXISTS doc_files (
    file TEXT NOT NULL, doc_id INTEGER NOT NULL, place TEXT NOT NULL DEFAULT '', PRIMARY KEY (file, doc_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS doc_files_by_doc ON doc_files (doc_id);
CREATE INDEX IF NOT EXISTS doc_files_by_place ON doc_files (file, place);
"""
_JSONL_ROW = re.compile(r"(.*\.jsonl):\d+", re.IGNORECASE)  # a JSONL row's origin: "file:N"
_PART_TITLE = re.compile(r" \(part (\d+) of \d+\)\Z")  # documents.py's title of a file's part


def exists(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE name = 'doc_files'").fetchone() is not None


def create(db: sqlite3.Connection) -> None:
    """The table of an index that has none: each document held by the file it came from."""
    db.executescript(SCHEMA)
    db.executemany("INSERT OR IGNORE INTO doc_files (file, doc_id, place) VALUES (?, ?, ?)", _held_documents(db))


def record_places(db: sqlite3.Connection) -> None:
    """Give the documents of a table made before places were recorded theirs in the file they came from."""
    db.execute("ALTER TABLE doc_files ADD COLUMN place TEXT NOT NULL DEFAULT ''")
    db.execute("CREATE INDEX doc_files_by_place ON doc_files (file, place)")
    db.executemany("UPDATE doc_files SET place = ? WHERE file = ? AND doc_id = ?",
                   [(place, file, doc_id) for file, doc_id, place in _held_documents(db)])


def file_of(origin: str) -> str:
    """The file a document's origin names (a JSONL row's: "file:N")."""
    row = _JSONL_ROW.fullmatch(origin)
    return row.group(1) if row else origin


def _place_of(origin: str, title: str, url: str) -> str:
    """The place in its file (Document.place) of a document indexed before places were recorded."""
    if _JSONL_ROW.fullmatch(origin):
        return jsonl_place(title, url)
    part = _PART_TITLE.search(title)
    return part.group(1) if part else "1"


def _held_documents(db: sqlite3.Connection) -> list[tuple[str, int, str]]:
    """(file, id, place) of each document with an origin, as read from it."""
    return [(file_of(origin), doc_id, _place_of(origin, title, url)) for doc_id, origin, title, url in
            db.execute("SELECT id, origin, title, url FROM docs WHERE origin != ''").fetchall()]


def replaceable(db: sqlite3.Connection, source: str, place: str, kept: set[int]) -> int | None:
    """The document `source` held at `place`, to be given the text the file holds there now: not one another file
    holds too (it stays, theirs) or one this add kept."""
    for (doc_id,) in db.execute(
            "SELECT doc_id FROM doc_files AS f WHERE file = ? AND place = ? AND NOT EXISTS "
            "(SELECT 1 FROM doc_files WHERE doc_id = f.doc_id AND file != f.file)", (source, place)).fetchall():
        if doc_id not in kept:
            return doc_id
    return None


def text_hash(text: str) -> str:
    """A part's text's hash: its title ("part k of n") changes as parts are added above it."""
    return hashlib.sha256(text.encode()).hexdigest()


def held_texts(db: sqlite3.Connection, source: str) -> dict[str, int]:
    """The documents `source` holds and no other file does, by their text's hash."""
    return {text_hash(text): doc_id for doc_id, text in db.execute(
        "SELECT id, text FROM doc_files AS f JOIN docs ON id = doc_id WHERE file = ? AND NOT EXISTS "
        "(SELECT 1 FROM doc_files WHERE doc_id = f.doc_id AND file != f.file)", (source,))}


def holds_any(db: sqlite3.Connection, source: str) -> bool:
    return db.execute("SELECT 1 FROM doc_files WHERE file = ? LIMIT 1", (source,)).fetchone() is not None


def gone_texts(db: sqlite3.Connection, source: str, kept: set[int]) -> dict[str, int]:
    """The documents `source` held and holds no longer (not `kept`), that no other file holds, by their text's hash:
    read by id, so that a huge JSONL file of which a few rows changed reads only those."""
    gone = [doc_id for (doc_id,) in db.execute("SELECT doc_id FROM doc_files WHERE file = ?", (source,)).fetchall()
            if doc_id not in kept]
    texts: dict[str, int] = {}
    for doc_id in gone:
        for (text,) in db.execute("SELECT text FROM docs WHERE id = ? AND NOT EXISTS "
                                  "(SELECT 1 FROM doc_files WHERE doc_id = id AND file != ?)", (doc_id, source)):
            texts.setdefault(text_hash(text), doc_id)
    return texts


def hold(db: sqlite3.Connection, source: str, doc_id: int, place: str) -> None:
    """`source` holds the document at `place` (now: a text moved within the file moves its place)."""
    db.execute("INSERT INTO doc_files (file, doc_id, place) VALUES (?, ?, ?) "
               "ON CONFLICT (file, doc_id) DO UPDATE SET place = excluded.place", (source, doc_id, place))
