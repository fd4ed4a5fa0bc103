"""Local corpus: Arabic written with or without its vowel marks and hamza, and Russian with ё or е, find each other
(folding.fold's letter forms), in a new index and in one built before them (schema 4), once it is written to."""

import sqlite3
from contextlib import closing

import pytest

from heavy.corpus.documents import Document
from heavy.corpus.folding import nfkc_folded
from heavy.corpus.index import PLACES_VERSION, SCHEMA_VERSION, CorpusIndex
from heavy.corpus.writes import indexed_as

VOWELLED = "كَتَبَ أَحْمَدُ الدَّرْسَ فِي المَدْرَسَةِ."  # as a school book or a dictionary writes it
DOCUMENTS = [
    Document("درس", VOWELLED),
    Document("Ёлка", "Новогодняя ёлка стоит в центре Москвы."),
    Document("Volcanoes", "Hekla is one of the most active volcanoes in Iceland."),
]
QUERIES = [  # (query, the page it finds)
    ("كتب احمد الدرس", "درس"),  # as usually typed: no marks, alef without its hamza
    ("المدرسة", "درس"),
    ("كَتَبَ", "درس"),
    ("елка", "Ёлка"),
    ("ёлка", "Ёлка"),
    ("volcanoes", "Volcanoes"),
]


def titles(index: CorpusIndex, query: str) -> list[str]:
    return [hit.title for hit in index.search(query, k=5)]


@pytest.mark.parametrize(("query", "title"), QUERIES)
def test_letters_written_two_ways_find_each_other(tmp_path, query, title):
    index = CorpusIndex(tmp_path / "i.sqlite")
    index.add(DOCUMENTS)
    assert titles(index, query) == [title]
    assert VOWELLED.split()[0] in index.search("كتب", k=1)[0].snippet  # shown as written


def test_an_index_built_before_letter_folding_folds_them_when_written_and_is_searched_as_built_till_then(tmp_path):
    path = tmp_path / "old.sqlite"
    CorpusIndex(path).add(DOCUMENTS, source="old.md")
    with closing(sqlite3.connect(path)) as db, db:  # as schema 4 indexed them: NFKC only, the marks kept
        for doc_id, title, text in db.execute("SELECT id, title, text FROM docs").fetchall():
            db.execute("INSERT INTO docs_fts (docs_fts, rowid, title, text) VALUES ('delete', ?, ?, ?)",
                       (doc_id, *indexed_as(title, text)))
            db.execute("INSERT INTO docs_fts (rowid, title, text) VALUES (?, ?, ?)",
                       (doc_id, nfkc_folded(title), nfkc_folded(text)))
        db.execute(f"PRAGMA user_version = {PLACES_VERSION}")
    index = CorpusIndex(path)  # searched, not written: left as it was built, a query folded as it was then
    assert titles(index, "كَتَبَ") == ["درس"] and titles(index, "ёлка") == ["Ёлка"]
    assert user_version(path) == PLACES_VERSION
    index.add([Document("Hekla", "Hekla erupted in 2000.")], source="new.md")  # written: upgraded first
    assert user_version(path) == SCHEMA_VERSION
    for query, title in QUERIES:
        assert titles(index, query) == [title], query
        assert titles(CorpusIndex(path), query) == [title], query
    index.add([], source="old.md")  # its documents go, told to FTS5 as it indexed them
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE VIRTUAL TABLE temp.terms USING fts5vocab(main, docs_fts, row)")
        assert {term for (term,) in db.execute("SELECT term FROM temp.terms")} == {"hekla", "erupt", "in", "2000"}


def user_version(path) -> int:
    with closing(sqlite3.connect(path)) as db:
        return db.execute("PRAGMA user_version").fetchone()[0]
