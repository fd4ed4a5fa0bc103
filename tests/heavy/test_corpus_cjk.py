"""Local corpus: Chinese, Japanese and Korean words are found inside their runs, in new and in older indexes."""

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from contextlib import closing
from pathlib import Path

import pytest

from heavy.corpus.documents import CorpusFormatError, Document
from heavy.corpus.index import SCHEMA_VERSION, CorpusIndex

DOCUMENTS = [
    Document("東京", "東京は日本の首都です。人口は約1400万人。"),
    Document("京都", "京都は日本の古都で、寺が多い。"),
    Document("北京", "北京是中国的首都，长城在北京附近。"),
    Document("서울", "서울은 한국의 수도입니다."),
    Document("Tokyo", "Tokyo is the capital of Japan. 猫カフェが多い。"),
    Document("Volcanoes", "Hekla is one of the most active volcanoes in Iceland."),
]
# the index as heavy built it before docs_cjk (schema 0): its FTS5 table alone
OLD_SCHEMA = """
CREATE TABLE docs (
    id INTEGER PRIMARY KEY, title TEXT NOT NULL, text TEXT NOT NULL, url TEXT NOT NULL, origin TEXT NOT NULL,
    content_hash TEXT NOT NULL UNIQUE, added_at REAL NOT NULL
);
CREATE VIRTUAL TABLE docs_fts USING fts5(title, text, content='docs', content_rowid='id', tokenize='porter unicode61');
"""


def titles(index: CorpusIndex, query: str) -> list[str]:
    return [hit.title for hit in index.search(query, k=5)]


@pytest.mark.parametrize(("query", "first"), [
    ("東京", "東京"),  # a word at the start of a sentence's run
    ("人口", "東京"),  # one in the middle of a run
    ("日本の首都はどこですか", "東京"),  # a question, one run: the page sharing most of its bigrams
    ("长城", "北京"),
    ("수도", "서울"),  # Korean: a word with its particle attached (수도입니다)
    ("猫", "Tokyo"),  # one character, as a prefix of the bigram it begins
    ("Japan 猫", "Tokyo"),  # Latin words still count beside CJK ones
    ("What is 长城?", "北京"),
])
def test_cjk_words_are_found_inside_a_run(tmp_path, query, first):
    index = CorpusIndex(tmp_path / "i.sqlite")
    index.add(DOCUMENTS)
    assert titles(index, query)[0] == first
    assert set(titles(index, "首都")) == {"東京", "北京"}
    assert titles(index, "What is 长城?") == ["北京"]  # no page found by "what" or "is" alone ("Tokyo is the ...")
    hit = index.search("长城", k=1)[0]
    assert "长城在北京附近" in hit.snippet  # the snippet is the text as written, not its bigrams


def test_english_queries_search_as_before(tmp_path):
    index = CorpusIndex(tmp_path / "i.sqlite")
    index.add(DOCUMENTS)
    assert titles(index, "most active volcano") == ["Volcanoes"]
    assert titles(index, "capital of Japan") == ["Tokyo"]


def test_a_mixed_query_finds_its_latin_words_in_pages_without_cjk(tmp_path):
    # a CJK query searched docs_cjk alone: the English page its Latin words name was never found
    index = CorpusIndex(tmp_path / "i.sqlite")
    index.add([*DOCUMENTS, Document("Python", "Python 是一种编程语言。"), Document(
        "asyncio", "The asyncio module of Python writes concurrent code with async and await. " * 3)])
    assert titles(index, "Python 的 asyncio")[:2] == ["asyncio", "Python"]
    assert titles(index, "asyncio 是什么") == ["asyncio"]
    hit = index.search("asyncio 是什么", k=1)[0]
    assert hit.snippet.startswith("The asyncio module") and hit.score < 0
    assert titles(index, "Japan 猫") == ["Tokyo"]  # a page holding both parts counts both, once each


def test_a_cjk_snippet_is_where_most_of_the_query_is(tmp_path):
    # it was around the first of the query's bigrams found, or of its last character alone: "都" of 都市, "日本"
    index = CorpusIndex(tmp_path / "i.sqlite")
    filler = "これは長い説明の文章です。" * 30
    index.add([Document("東京", "日本には多くの都市がある。" + filler + "東京は日本の首都です。")])
    for query in ("首都", "日本の首都はどこですか"):
        assert "東京は日本の首都です。" in index.search(query, k=1)[0].snippet

def test_an_edited_file_leaves_no_stale_bigrams(tmp_path):
    index = CorpusIndex(tmp_path / "i.sqlite")
    index.add([Document("東京", "東京は日本の首都です。", origin="a.md")], source="a.md")
    index.add([Document("東京", "東京は大きい。", origin="a.md")], source="a.md")
    assert titles(index, "首都") == []
    assert titles(index, "大きい") == ["東京"]


def write_old_index(path):
    with closing(sqlite3.connect(path)) as db, db:
        db.executescript(OLD_SCHEMA)
        for doc_id, doc in enumerate(DOCUMENTS, start=1):
            db.execute("INSERT INTO docs VALUES (?, ?, ?, '', '', ?, 0)", (doc_id, doc.title, doc.text, str(doc_id)))
            db.execute("INSERT INTO docs_fts (rowid, title, text) VALUES (?, ?, ?)", (doc_id, doc.title, doc.text))


def test_an_index_built_before_cjk_search_is_upgraded_when_opened(tmp_path):
    path = tmp_path / "old.sqlite"
    write_old_index(path)
    index = CorpusIndex(path)
    assert set(titles(index, "首都")) == {"東京", "北京"}
    assert titles(index, "volcanoes") == ["Volcanoes"]
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert titles(CorpusIndex(path), "长城") == ["北京"]  # opened again: nothing indexed twice


def test_an_index_from_a_newer_heavy_is_refused_with_a_clear_message(tmp_path):
    path = tmp_path / "new.sqlite"
    with closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(CorpusFormatError, match="newer heavy"):
        CorpusIndex(path)


def test_an_older_index_on_a_read_only_volume_is_still_searched():
    # a volume mounted read-only (deploy/README): the upgrade cannot be written, the search must still work
    scratch = Path(tempfile.mkdtemp(prefix="heavy-corpus-ro-"))
    try:
        write_old_index(scratch / "old.sqlite")
        os.chmod(scratch / "old.sqlite", 0o444)
        os.chmod(scratch, 0o555)  # no journal may be created beside it either
        # root writes past file modes: it searches from a mount namespace where the dir is a read-only bind mount
        # (another user could not read a checkout under a private temp dir)
        read_only = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                     f'mount --bind "{scratch}" "{scratch}" && mount -o remount,bind,ro "{scratch}" && exec "$0" "$@"'
                     ] if os.geteuid() == 0 else []
        search = ("from heavy.corpus.index import CorpusIndex\n"
                  f"print([h.title for h in CorpusIndex({str(scratch / 'old.sqlite')!r}).search('volcanoes', 5)])")
        done = subprocess.run([*read_only, sys.executable, "-c", search], capture_output=True, text=True,
                              cwd=Path(__file__).parents[2], env={**os.environ, "PYTHONPATH": "."}, timeout=60)
        assert done.stdout.strip() == "['Volcanoes']", done.stderr
        assert "read-only" in done.stderr  # the warning says why CJK words are found only as whole runs
    finally:
        os.chmod(scratch, 0o755)
        shutil.rmtree(scratch)
