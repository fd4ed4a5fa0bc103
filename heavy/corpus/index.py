"""A SQLite FTS5 index over corpus documents, ranked with BM25.

One file holds everything: `docs` (the documents), `docs_fts` (an external-content FTS5 table over
title and text) and `docs_cjk` (the documents holding Chinese, Japanese or Korean text, their runs of it as bigrams:
see heavy/corpus/cjk.py; a query with such text searches its runs there and its other words in `docs_fts`, any other
query `docs_fts` alone, as before). Both tables hold the text folded to NFKC, as a query is (heavy/corpus/folding.py);
`docs` holds it as written, which snippets and pages show. Documents are deduplicated by a hash of title + text, so
re-adding a directory is a no-op; `doc_files` records every file that holds each one, and where, so re-adding an edited
file replaces the documents it no longer holds (keeping the id, the page's address, of each one whose place in the
file holds a new text, and of a part whose text moved to another part number), and a document goes only when no file
holds it any more.
Each call opens its own connection, so one index can be used from several threads.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from heavy.corpus import cjk, doc_files
from heavy.corpus.documents import CorpusFormatError, Document, file_name
from heavy.corpus.folding import fold, nfkc_folded, tokenized_as_written
from heavy.corpus.query import expression_words, match_expression
from heavy.corpus.snippets import (
    FTS_ELLIPSIS,
    LONG_PAGE_CHARS,
    may_cut_a_grapheme,
    whole_graphemes,
    words_snippet,
)
from heavy.corpus.writes import AddCounts, add_cjk, add_documents, forget, indexed_as

logger = logging.getLogger(__name__)

TITLE_WEIGHT = 3.0  # a query term in the title says more about the page than one in the body
TEXT_WEIGHT = 1.0
COMMIT_FILES = 200  # files `CorpusIndex.adding` adds per transaction
SNIPPET_TOKENS = 64  # FTS5's maximum: most encyclopedia-style paragraphs fit whole
# PRAGMA user_version; 2 added docs_cjk, 3 folded what docs_fts and docs_cjk index to NFKC, 4 recorded each
# document's place in its file and the last id given, 5 folded letters written two ways (Arabic's vowel marks, ё:
# folding.fold); an older index is brought to 5 when opened to be written
SCHEMA_VERSION = 5
CJK_VERSION = 2
FOLDED_VERSION = 3
PLACES_VERSION = 4
LETTERS_VERSION = 5
_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    id INTEGER PRIMARY KEY, title TEXT NOT NULL, text TEXT NOT NULL, url TEXT NOT NULL, origin TEXT NOT NULL,
    content_hash TEXT NOT NULL UNIQUE, added_at REAL NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS docs_fts USING fts5(
    title, text, content='docs', content_rowid='id', tokenize='porter unicode61'
);
CREATE VIRTUAL TABLE IF NOT EXISTS docs_cjk USING fts5(title, text, tokenize='porter unicode61');
CREATE TABLE IF NOT EXISTS last_doc_id (id INTEGER NOT NULL);
"""
# FTS5's snippet, NULL for a page too long for it (snippets.LONG_PAGE_CHARS) or one folding splits otherwise
# (folding.tokenized_as_written): the index writes those itself
_FTS_SNIPPET = (f"CASE WHEN length(d.text) <= {LONG_PAGE_CHARS} AND tokenized_as_written(d.text) "
                f"THEN snippet(docs_fts, 1, '', '', '{FTS_ELLIPSIS}', {SNIPPET_TOKENS}) END")
_SEARCH = f"""
SELECT d.id, d.title, d.url, {_FTS_SNIPPET},
       bm25(docs_fts, {TITLE_WEIGHT}, {TEXT_WEIGHT}) AS score
FROM docs_fts JOIN docs AS d ON d.id = docs_fts.rowid
WHERE docs_fts MATCH ? ORDER BY score LIMIT ?
"""
# a CJK query's parts, each document's score: its runs' bigrams over docs_cjk, its other words over docs_fts
_RUN_SCORES = f"SELECT rowid, bm25(docs_cjk, {TITLE_WEIGHT}, {TEXT_WEIGHT}) FROM docs_cjk WHERE docs_cjk MATCH ?"
_WORD_SCORES = f"SELECT rowid, bm25(docs_fts, {TITLE_WEIGHT}, {TEXT_WEIGHT}) FROM docs_fts WHERE docs_fts MATCH ?"
_SNIPPET = f"""
SELECT {_FTS_SNIPPET} FROM docs_fts JOIN docs AS d ON d.id = docs_fts.rowid WHERE docs_fts MATCH ? AND d.id = ?
"""


@dataclass(frozen=True)
class StoredDocument:
    id: int
    title: str
    text: str
    url: str
    content_hash: str


@dataclass(frozen=True)
class SearchHit:
    doc_id: int
    title: str
    url: str  # the document's original address ("" when it has none)
    snippet: str
    score: float  # BM25, lower is better (SQLite's sign convention)


def existing_index(path: Path | str) -> Path:
    """`path`, if an index holding documents was built there (see `indexed_documents`)."""
    indexed_documents(path)
    return Path(path)


def indexed_documents(path: Path | str) -> int:
    """How many documents the index at `path` holds, read without writing; an error if none, or no index is there:
    opening a mistyped path would create an empty corpus, and searching an empty one finds nothing, so that
    trajectories answer from the model's memory alone."""
    if not (path := Path(path)).is_file():
        raise FileNotFoundError(f"no corpus index at {path}; build one with `heavy corpus add PATH`")
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            documents = db.execute("SELECT count(*) FROM docs").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise CorpusFormatError(f"{path} is not a corpus index ({exc}); build one with `heavy corpus add PATH`") \
            from exc
    if documents == 0:
        raise CorpusFormatError(f"the corpus index at {path} holds no documents; add some with `heavy corpus add PATH`")
    return documents


def _upgrade(db: sqlite3.Connection, version: int) -> None:
    """Bring an index of `version` to SCHEMA_VERSION: before CJK_VERSION, index the bigrams of its documents holding
    CJK text; before FOLDED_VERSION, index folded the documents folding changes (the others are indexed as folded);
    before PLACES_VERSION, record the documents' places and the last id given; before LETTERS_VERSION, index anew
    the documents whose letters fold."""
    for statement in filter(str.strip, _SCHEMA.split(";")):
        db.execute(statement)
    if version < FOLDED_VERSION:
        _fold_documents(db, version)
    elif version < LETTERS_VERSION:
        _fold_letters(db)
    if version < PLACES_VERSION:
        db.execute("INSERT INTO last_doc_id SELECT coalesce(max(id), 0) FROM docs")
        if doc_files.exists(db):
            doc_files.record_places(db)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _fold_documents(db: sqlite3.Connection, version: int) -> None:
    # read one at a time: a large corpus is not held whole
    for doc_id, title, text in db.execute("SELECT id, title, text FROM docs"):
        indexed = indexed_as(title, text)
        if indexed != (title, text):  # indexed as written until FOLDED_VERSION
            db.execute("INSERT INTO docs_fts (docs_fts, rowid, title, text) VALUES ('delete', ?, ?, ?)",
                       (doc_id, title, text))
            db.execute("INSERT INTO docs_fts (rowid, title, text) VALUES (?, ?, ?)", (doc_id, *indexed))
        elif version >= CJK_VERSION:
            continue
        db.execute("DELETE FROM docs_cjk WHERE rowid = ?", (doc_id,))
        add_cjk(db, doc_id, *indexed)


def _fold_letters(db: sqlite3.Connection) -> None:
    """Index anew the documents an index of FOLDED_VERSION or PLACES_VERSION holds NFKC-folded only."""
    for doc_id, title, text in db.execute("SELECT id, title, text FROM docs"):
        indexed = indexed_as(title, text)
        was = (nfkc_folded(title), nfkc_folded(text))
        if indexed != was:
            db.execute("INSERT INTO docs_fts (docs_fts, rowid, title, text) VALUES ('delete', ?, ?, ?)", (doc_id, *was))
            db.execute("INSERT INTO docs_fts (rowid, title, text) VALUES (?, ?, ?)", (doc_id, *indexed))
            db.execute("DELETE FROM docs_cjk WHERE rowid = ?", (doc_id,))
            add_cjk(db, doc_id, *indexed)


def _create_or_upgrade(db: sqlite3.Connection, path: Path, writing: bool) -> int:
    """Create the tables, or bring an index built by an older heavy to SCHEMA_VERSION (once: a concurrent opener
    waits for the write lock, then finds the version set). The version the index is searched as: an older index we
    may not write (a read-only volume) keeps its own and is searched as it was built. One of FOLDED_VERSION is
    upgraded only to be written: what it lacks (places) is for adding to it, and a worker that searched it would
    have made it an index the older workers sharing it (a rolling upgrade) refuse."""
    found = db.execute("PRAGMA user_version").fetchone()[0]
    if found == SCHEMA_VERSION or (FOLDED_VERSION <= found < SCHEMA_VERSION and not writing):
        return found
    try:
        db.execute("BEGIN IMMEDIATE")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise CorpusFormatError(f"the corpus index at {path} was built by a newer heavy (schema {version}, this "
                                    f"one reads {SCHEMA_VERSION}); upgrade heavy or rebuild it with `heavy corpus add`")
        if version < SCHEMA_VERSION:
            _upgrade(db, version)
        db.commit()
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode != sqlite3.SQLITE_READONLY:  # a full disk, a locked file
            raise CorpusFormatError(f"the corpus index at {path} was built by an older heavy and could not be "
                                    f"upgraded ({exc}); rebuild it with `heavy corpus add`") from exc
        if found >= FOLDED_VERSION:  # what it lacks (places) is for adding to it, not searching it: nothing to say
            return found
        logger.warning("the corpus index at %s was built by an older heavy and is read-only: until it is rebuilt "
                       "with `heavy corpus add`, %sfull-width, half-width and other compatibility forms (ＡＢＣ, ﬁ) "
                       "are found only as written", path,
                       "Chinese, Japanese and Korean words are found only as whole runs, " if found < CJK_VERSION
                       else "")
        return found
    return SCHEMA_VERSION


def _fts_snippet(db: sqlite3.Connection, doc_id: int, snippet: str) -> str:
    """FTS5's snippet, its last letter with its marks (snippets.whole_graphemes)."""
    if not may_cut_a_grapheme(snippet):
        return snippet
    return whole_graphemes(snippet, db.execute("SELECT text FROM docs WHERE id = ?", (doc_id,)).fetchone()[0])


def _index_snippet(db: sqlite3.Connection, doc_id: int, expression: str) -> str:
    """The snippet of a page FTS5's cannot serve (see _FTS_SNIPPET)."""
    text = db.execute("SELECT text FROM docs WHERE id = ?", (doc_id,)).fetchone()[0]
    return words_snippet(text, expression_words(expression))


class CorpusIndex:
    def __init__(self, path: Path | str, keep_function_words: bool = False) -> None:
        """`keep_function_words`: query with every word, as searches did before FUNCTION_WORDS (replays of runs
        recorded then must find what they found)."""
        self.path = Path(path)
        self.keep_function_words = keep_function_words
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            self._searched_as(_create_or_upgrade(db, self.path, writing=False))

    def _searched_as(self, version: int) -> None:
        self.cjk_searchable = version >= CJK_VERSION
        # a query folded as the index folds its documents: a read-only or unwritten older one as it was built
        self.fold_query = (fold if version >= LETTERS_VERSION else nfkc_folded if version >= FOLDED_VERSION
                           else None)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.create_function("tokenized_as_written", 1, tokenized_as_written, deterministic=True)
        return db

    def _connect_to_write(self) -> sqlite3.Connection:
        """A connection, the index upgraded and doc_files made first if it has none: on a write, not on opening, so
        that searching an index built before them needs no write access."""
        db = self._connect()
        try:
            self._searched_as(_create_or_upgrade(db, self.path, writing=True))  # upgraded: searched as it is now
            if not doc_files.exists(db):
                with db:
                    doc_files.create(db)
        except BaseException:
            db.close()
            raise
        return db

    def add(self, documents: Iterable[Document], source: str = "") -> AddCounts:
        """Index documents (see `_add`); `source`: the file they all were read from."""
        with self.adding() as add:
            return add(documents, source)

    @contextmanager
    def adding(self) -> Iterator[Callable[[Iterable[Document], str], AddCounts]]:
        """`add` for many files through one connection: each file's documents in a savepoint, undone alone if reading
        the file fails (what an earlier add read of it stays), and a commit every COMMIT_FILES files, not each: a
        commit waits for the disk (24 ms here), and a folder of 3,000 notes took 70 s to add, 62 s to add again
        unchanged. What was added is committed however the adds end (a Ctrl-C keeps the files done, as before)."""
        with closing(self._connect_to_write()) as db:
            db.isolation_level = None  # its transactions are this method's
            uncommitted = 0

            def add(documents: Iterable[Document], source: str = "") -> AddCounts:
                nonlocal uncommitted
                if not db.in_transaction:  # the write lock at once: a read first, then a write, is refused at once
                    db.execute("BEGIN IMMEDIATE")  # (SQLITE_BUSY, no wait) while another add commits
                db.execute("SAVEPOINT file")
                try:
                    counts = add_documents(db, documents, source)
                except BaseException:
                    # a full disk (or a write error) rolls the whole transaction back itself, savepoint included:
                    # undoing it again raised "no such savepoint", hiding the error and the traceback's cause
                    if db.in_transaction:
                        db.execute("ROLLBACK TO file")
                        db.execute("RELEASE file")
                    else:
                        uncommitted = 0
                    raise
                db.execute("RELEASE file")
                if (uncommitted := uncommitted + 1) == COMMIT_FILES:
                    db.execute("COMMIT")
                    uncommitted = 0
                return counts

            try:
                yield add
            finally:
                if db.in_transaction:
                    db.execute("COMMIT")

    def forget_files(self, folder: str, present: set[str], kept_under: set[str] = frozenset()) -> int:
        """Forget, in one transaction, the files under `folder` not in `present` (deleted since they were added),
        but those under a folder of `kept_under`: their documents no other file holds are deleted. How many were."""
        prefix = folder.rstrip("/") + "/"
        kept = tuple(kept.rstrip("/") + "/" for kept in kept_under)
        with closing(self._connect_to_write()) as db, db:
            files = [file for (file,) in db.execute(
                "SELECT DISTINCT file FROM doc_files WHERE substr(file, 1, ?) = ?", (len(prefix), prefix)).fetchall()]
            return sum(forget(db, file, set()) for file in files if file not in present and not file.startswith(kept))

    def adopt_relative_files(self, scope: str) -> None:
        """Name absolutely (by `file_name`) the files recorded by the relative paths they were added by (an index
        built before `corpus add` resolved them holds "docs/a.md"), read from the working directory, where that add,
        run again, reads them from; those that are then `scope` (a file) or under it (a folder). Re-adding it then
        replaces what an edited file no longer holds and forgets a deleted one, as for any file added since."""
        with closing(self._connect_to_write()) as db, db:
            relative = [file for (file,) in db.execute("SELECT DISTINCT file FROM doc_files WHERE file NOT LIKE '/%'")]
            named = [(str(file_name(Path(file))), file) for file in relative]
            under = scope.rstrip("/") + "/"
            renamed = [(name, file) for name, file in named if name == scope or name.startswith(under)]
            db.executemany("INSERT OR IGNORE INTO doc_files (file, doc_id, place) "
                           "SELECT ?, doc_id, place FROM doc_files WHERE file = ?", renamed)
            db.executemany("DELETE FROM doc_files WHERE file = ?", [(file,) for _, file in renamed])

    def search(self, query: str, k: int) -> list[SearchHit]:
        if self.fold_query is not None:
            query = self.fold_query(query)
        if self.cjk_searchable and cjk.has_cjk(query):
            return self._search_cjk(query, k)
        expression = match_expression(query, self.keep_function_words)
        if expression is None:
            return []
        with closing(self._connect()) as db:
            rows = db.execute(_SEARCH, (expression, k)).fetchall()
            return [SearchHit(doc_id=r[0], title=r[1], url=r[2], score=r[4],
                              snippet=_fts_snippet(db, r[0], r[3]) if r[3] is not None
                              else _index_snippet(db, r[0], expression))
                    for r in rows]

    def _search_cjk(self, query: str, k: int) -> list[SearchHit]:
        """A query with CJK text: its runs as bigrams over the documents holding some (docs_cjk), its other words over
        all of them, as an English query's (docs_fts: "Python 的 asyncio" finds the English asyncio page). A page
        scores the sum of both parts' BM25, as BM25 sums its terms'. Its snippet: around the first run found, or,
        found by the other words alone, FTS5's."""
        rest, terms = cjk.query_terms(query)
        words = match_expression(rest, self.keep_function_words, beside_other_terms=True)
        with closing(self._connect()) as db:
            by_run = dict(db.execute(_RUN_SCORES, (" OR ".join(terms),)).fetchall())
            by_words = dict(db.execute(_WORD_SCORES, (words,)).fetchall()) if words else {}
            scores = {doc_id: by_run.get(doc_id, 0.0) + by_words.get(doc_id, 0.0) for doc_id in by_run | by_words}
            hits = []
            for doc_id in sorted(scores, key=lambda d: (scores[d], d))[:k]:
                title, url, text = db.execute("SELECT title, url, text FROM docs WHERE id = ?", (doc_id,)).fetchone()
                fts = None if doc_id in by_run else db.execute(_SNIPPET, (words, doc_id)).fetchone()[0]
                snippet = (cjk.snippet(text, query) if doc_id in by_run
                           else whole_graphemes(fts, text) if fts and may_cut_a_grapheme(fts)
                           else fts or words_snippet(text, expression_words(words)))
                hits.append(SearchHit(doc_id=doc_id, title=title, url=url, snippet=snippet, score=scores[doc_id]))
        return hits

    def get(self, doc_id: int) -> StoredDocument | None:
        with closing(self._connect()) as db:
            row = db.execute("SELECT id, title, text, url, content_hash FROM docs WHERE id = ?", (doc_id,)).fetchone()
        return StoredDocument(*row) if row else None

    def count(self) -> int:
        with closing(self._connect()) as db:
            return db.execute("SELECT count(*) FROM docs").fetchone()[0]
