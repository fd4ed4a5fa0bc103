"""Writing a file's documents into a corpus index (heavy/corpus/index.py): each stored once by its content's hash,
at the address (/doc/<id>) its text or its place in the file held before, and forgotten when no file holds it."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from typing import NamedTuple

from heavy.corpus import cjk, doc_files
from heavy.corpus.documents import Document, is_part
from heavy.corpus.folding import fold

# at most this many rows of a JSONL file at a new place wait to be matched by text to one it held (a title edited):
# a file may hold millions of rows, which must not be held in memory; those past it are placed as new rows at once
MATCHED_ROWS = 10_000


def content_hash(title: str, text: str) -> str:
    return hashlib.sha256(f"{title}\n{text}".encode()).hexdigest()


class AddCounts(NamedTuple):
    added: int
    duplicates: int  # already indexed (from this file before, or from another)
    removed: int  # the source file's documents it no longer holds
    # documents of the source file given the new text of their place in it, or a part its new number (its title),
    # keeping their ids
    replaced: int = 0


def forget(db: sqlite3.Connection, file: str, kept: set[int]) -> int:
    """`file` no longer holds its documents outside `kept`; those no other file holds are deleted. How many were."""
    gone = [doc_id for (doc_id,) in db.execute("SELECT doc_id FROM doc_files WHERE file = ?", (file,)).fetchall()
            if doc_id not in kept]
    db.executemany("DELETE FROM doc_files WHERE file = ? AND doc_id = ?", [(file, doc_id) for doc_id in gone])
    orphans = [(doc_id, *indexed_as(title, text)) for doc_id in gone for _, title, text in db.execute(
        "SELECT id, title, text FROM docs WHERE id = ? AND NOT EXISTS (SELECT 1 FROM doc_files WHERE doc_id = id)",
        (doc_id,)).fetchall()]
    # an external-content FTS5 table forgets a row only when told the values it indexed
    db.executemany("INSERT INTO docs_fts (docs_fts, rowid, title, text) VALUES ('delete', ?, ?, ?)", orphans)
    db.executemany("DELETE FROM docs_cjk WHERE rowid = ?", [(doc_id,) for doc_id, _, _ in orphans])
    db.executemany("DELETE FROM docs WHERE id = ?", [(doc_id,) for doc_id, _, _ in orphans])
    return len(orphans)


def _index_document(db: sqlite3.Connection, doc_id: int, doc: Document) -> None:
    indexed = indexed_as(doc.title, doc.text)
    db.execute("INSERT INTO docs_fts (rowid, title, text) VALUES (?, ?, ?)", (doc_id, *indexed))
    add_cjk(db, doc_id, *indexed)


def _replace(db: sqlite3.Connection, doc_id: int, doc: Document, digest: str, now: float) -> None:
    """The document `doc_id` is now `doc`, at the same address."""
    title, text = db.execute("SELECT title, text FROM docs WHERE id = ?", (doc_id,)).fetchone()
    db.execute("INSERT INTO docs_fts (docs_fts, rowid, title, text) VALUES ('delete', ?, ?, ?)",
               (doc_id, *indexed_as(title, text)))
    db.execute("DELETE FROM docs_cjk WHERE rowid = ?", (doc_id,))
    db.execute("UPDATE docs SET title = ?, text = ?, url = ?, origin = ?, content_hash = ?, added_at = ? WHERE id = ?",
               (doc.title, doc.text, doc.url, doc.origin, digest, now, doc_id))
    _index_document(db, doc_id, doc)


def indexed_as(title: str, text: str) -> tuple[str, str]:
    """A document's title and text as docs_fts indexes them (and docs_cjk, as bigrams)."""
    return fold(title), fold(text)


def add_cjk(db: sqlite3.Connection, doc_id: int, title: str, text: str) -> None:
    """`title` and `text` as indexed (`indexed_as`)."""
    if cjk.has_cjk(title) or cjk.has_cjk(text):
        db.execute("INSERT INTO docs_cjk (rowid, title, text) VALUES (?, ?, ?)",
                   (doc_id, cjk.shadow_text(title), cjk.shadow_text(text)))


def add_documents(db: sqlite3.Connection, documents: Iterable[Document], source: str) -> AddCounts:
    """Index documents. `source`: the file they all were read from; its documents added before and not among these
    are removed (the file was edited: its old text must not be found beside the new), unless another file holds them
    too. Content is stored once (by its hash), but a document's id, its address (/doc/<id>), stays with its text or
    its place in the file: a file's part whose text it held before keeps that part's id, under its new number (text
    inserted above it adds a part); a new text at a place the file held another before takes that document's id,
    where no other file holds it; a JSONL row at a new place (its title edited) whose text the file held at a place
    it no longer has takes that one's. Ids are never given twice: a removed document's address is a 404, never
    another page."""
    counts = {"added": 0, "duplicates": 0, "replaced": 0}
    kept: set[int] = set()
    now = time.time()

    def place(doc: Document, digest: str, doc_id: int | None) -> None:
        """A text not indexed yet: at `doc_id`, the document it replaces, else at a new id."""
        if doc_id is not None:
            _replace(db, doc_id, doc, digest, now)
            counts["replaced"] += 1
        else:
            doc_id = db.execute(
                "INSERT INTO docs (id, title, text, url, origin, content_hash, added_at) "
                "SELECT id + 1, ?, ?, ?, ?, ?, ? FROM last_doc_id",
                (doc.title, doc.text, doc.url, doc.origin, digest, now),
            ).lastrowid
            db.execute("UPDATE last_doc_id SET id = ?", (doc_id,))
            _index_document(db, doc_id, doc)
            counts["added"] += 1
        _hold(db, source, doc_id, doc, kept)

    seen: set[int] = set()  # the rows' places met so far, by a 64-bit hash (as `kept`, one int a row)
    repeats = Counter[str]()  # the places met again, how many times

    def own_place(doc: Document) -> Document:
        """A JSONL row at a place an earlier row of the file has, at its k-th ("#2 url ..."): the chunks of one
        page, rows sharing its url and title, took one address in turn (a place never starts with "#")."""
        if not (source and doc.place) or is_part(doc.place):
            return doc
        if (key := int.from_bytes(hashlib.blake2b(doc.place.encode(), digest_size=8).digest())) not in seen:
            seen.add(key)
            return doc
        repeats[doc.place] += 1
        return replace(doc, place=f"#{repeats[doc.place] + 1} {doc.place}")

    def held_at_place(doc: Document) -> int | None:
        return doc_files.replaceable(db, source, doc.place, kept) if source and doc.place else None

    held_parts: dict[str, int] | None = None  # the file's parts by their text's hash, read when first needed
    new_parts: list[tuple[Document, str]] = []  # placed once every part held before has been found by its text
    held_before: bool | None = None  # whether the file held documents before (a first add has no rows to match)
    # rows with a new text, placed once every row whose text is unchanged holds its place (a row inserted above the
    # chunks of a page, all at its url, would take the first one's address): at their place, else by their text
    # among the rows the file no longer holds (a title edited)
    new_rows: list[tuple[Document, str]] = []
    for doc in map(own_place, documents):
        digest = content_hash(doc.title, doc.text)
        if found := db.execute("SELECT id FROM docs WHERE content_hash = ?", (digest,)).fetchone():
            doc_id = found[0]
            counts["duplicates"] += 1
        elif not (source and is_part(doc.place)):  # a JSONL row: its place is the user's (and its file may be huge)
            if source and len(new_rows) < MATCHED_ROWS:
                held_before = doc_files.holds_any(db, source) if held_before is None else held_before
            if held_before and len(new_rows) < MATCHED_ROWS:
                new_rows.append((doc, digest))  # after the rows whose text is unchanged have moved to their places
            else:
                place(doc, digest, held_at_place(doc))
            continue
        else:
            held_parts = doc_files.held_texts(db, source) if held_parts is None else held_parts
            if (doc_id := held_parts.pop(doc_files.text_hash(doc.text), None)) is None or doc_id in kept:
                new_parts.append((doc, digest))
                continue
            _replace(db, doc_id, doc, digest, now)  # its new title: "(part k of n)", or a short file's new one
            counts["replaced"] += 1
        _hold(db, source, doc_id, doc, kept)
    for doc, digest in new_parts:
        place(doc, digest, held_at_place(doc))
    unplaced = []
    for doc, digest in new_rows:
        if (doc_id := held_at_place(doc)) is None:
            unplaced.append((doc, digest))
        else:
            place(doc, digest, doc_id)
    gone = doc_files.gone_texts(db, source, kept) if unplaced else {}
    for doc, digest in unplaced:
        place(doc, digest, gone.pop(doc_files.text_hash(doc.text), None))
    return AddCounts(removed=forget(db, source, kept) if source else 0, **counts)


def _hold(db: sqlite3.Connection, source: str, doc_id: int, doc: Document, kept: set[int]) -> None:
    """`source` holds `doc_id` at `doc`'s place (the first place it holds it at)."""
    if source and doc_id not in kept:
        kept.add(doc_id)
        doc_files.hold(db, source, doc_id, doc.place)
