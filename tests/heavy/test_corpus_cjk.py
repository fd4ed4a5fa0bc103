"""Local corpus: Chinese, Japanese and Korean words are found inside their runs, in new and in older indexes."""

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import unicodedata
from contextlib import closing
from pathlib import Path

import pytest

from heavy.corpus import cjk
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
# compatibility forms, each found only by a query written the same way before the index folded them (NFKC)
DECOMPOSED = unicodedata.normalize("NFD", "ガイドブックの説明です。")  # macOS text: カ + U+3099
COMPAT_DOCUMENTS = [
    Document("Full-width", "ＰＹＴＨＯＮ is a programming language."),  # typed with a Japanese IME
    Document("Half-width", "ｶﾀｶﾅで書かれた古い文書。"),
    Document("Ligature", "The ﬁnance ministry met on Monday."),  # a PDF's extracted text
    Document("Decomposed", DECOMPOSED),
    Document("Symbols", "Java™ runs on 10㎏ of servers."),
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

def test_a_cjk_snippet_never_cuts_an_emoji_or_a_letter_from_its_accent(tmp_path):
    family, accented = "👨\u200d👩\u200d👧\u200d👦", "e\u0301"  # 7 code points; 2
    index = CorpusIndex(tmp_path / "i.sqlite")
    # the window starts 40 code points before 长城, inside the fifth family, and ends 200 after, inside an "é"
    index.add([Document("长城", family * 10 + "长城是中国的。" + accented * 100)])
    snippet = index.search("长城", k=1)[0].snippet.removeprefix(" … ").removesuffix(" … ")
    assert snippet.startswith(family * 2)
    assert snippet.endswith(accented)


def test_a_snippet_never_cuts_a_letter_from_its_vowel_sign(tmp_path):
    # unicode61 reads a mark as a separator: FTS5's snippet ended at "दुन", the "ि" of "दुनिया" cut off
    words = " ".join(["नमस्ते दुनिया"] * 60)
    page = f"{words} भारत एक विशाल देश है {words}"
    index = CorpusIndex(tmp_path / "i.sqlite")
    index.add([Document("Hindi", page)])
    shown = index.search("भारत", k=1)[0].snippet.removeprefix(" … ").removesuffix(" … ")
    start = page.index(shown)
    assert "भारत" in shown and not any(unicodedata.category(page[at]).startswith("M")
                                       for at in (start, start + len(shown)))


def test_an_edited_file_leaves_no_stale_bigrams(tmp_path):
    index = CorpusIndex(tmp_path / "i.sqlite")
    index.add([Document("東京", "東京は日本の首都です。", origin="a.md")], source="a.md")
    index.add([Document("東京", "東京は大きい。", origin="a.md")], source="a.md")
    assert titles(index, "首都") == []
    assert titles(index, "大きい") == ["東京"]


def write_old_index(path, version=0, documents=DOCUMENTS):
    """An index as heavy built it at schema `version`: 0, FTS5 alone; 2, with docs_cjk; both indexing text as
    written. Its documents are held by the file "old.md"."""
    with closing(sqlite3.connect(path)) as db, db:
        db.executescript(OLD_SCHEMA)
        if version == 2:
            db.execute("CREATE VIRTUAL TABLE docs_cjk USING fts5(title, text, tokenize='porter unicode61')")
        for doc_id, doc in enumerate(documents, start=1):
            db.execute("INSERT INTO docs VALUES (?, ?, ?, '', 'old.md', ?, 0)",
                       (doc_id, doc.title, doc.text, str(doc_id)))
            db.execute("INSERT INTO docs_fts (rowid, title, text) VALUES (?, ?, ?)", (doc_id, doc.title, doc.text))
            if version == 2 and cjk.has_cjk(doc.title + doc.text):
                db.execute("INSERT INTO docs_cjk (rowid, title, text) VALUES (?, ?, ?)",
                           (doc_id, cjk.shadow_text(doc.title), cjk.shadow_text(doc.text)))
        db.execute(f"PRAGMA user_version = {version}")


FOLDED_QUERIES = [  # (query, the page it finds, the page's words it is shown by, as written)
    ("python", "Full-width", "ＰＹＴＨＯＮ is"),
    ("カタカナ", "Half-width", "ｶﾀｶﾅで書かれた"),
    ("finance", "Ligature", "ﬁnance ministry"),
    ("ガイド", "Decomposed", DECOMPOSED),
    ("ｐｙｔｈｏｎ", "Full-width", "ＰＹＴＨＯＮ is"),  # and the other way round: a query in compatibility forms
    ("ＦＩＮＡＮＣＥ", "Ligature", "ﬁnance ministry"),
    ("ｶﾞｲﾄﾞ", "Decomposed", DECOMPOSED),
    ("java", "Symbols", "Java™ runs"),  # ™ folds to TM, ㎏ to kg: each is still a word of its own
    ("tm", "Symbols", "Java™ runs"),
    ("10", "Symbols", "10㎏"),
]


@pytest.mark.parametrize(("query", "title", "written"), FOLDED_QUERIES)
def test_compatibility_forms_are_found_by_their_ordinary_ones(tmp_path, query, title, written):
    index = CorpusIndex(tmp_path / "i.sqlite")
    index.add([*DOCUMENTS, *COMPAT_DOCUMENTS])
    hits = index.search(query, k=5)
    assert [hit.title for hit in hits] == [title]
    assert written in hits[0].snippet  # shown as written


def test_a_folded_hit_deep_in_a_page_gets_its_snippet_there(tmp_path):
    # a snippet's terms are looked for in the page folded, and shown where they are as written
    index = CorpusIndex(tmp_path / "i.sqlite")
    index.add([Document("Kana", "これは長い説明の文章です。" * 30 + "ｶﾀｶﾅの説明。"),
               Document("Huge", "volcano " * 20_000 + "The ﬁnance ministry met.")])  # past LONG_PAGE_CHARS
    assert "ｶﾀｶﾅの説明。" in index.search("カタカナ", k=1)[0].snippet
    assert "ﬁnance ministry" in index.search("finance ministry volcano", k=1)[0].snippet
    # FTS5's snippet placed hits by token number in the page as written: "½" folds to two tokens ("1⁄2")
    words = [f"w{n}" for n in range(400)]
    index.add([Document("Recipe", " ".join(words[:200]) + " ½" * 100 + " the lava erupted " + " ".join(words[200:]))])
    snippet = index.search("lava", k=1)[0].snippet
    assert "the lava erupted" in snippet and len(snippet) < 300


@pytest.mark.parametrize("version", [0, 2])
def test_an_index_built_before_folding_is_folded_when_opened(tmp_path, version):
    path = tmp_path / "old.sqlite"
    write_old_index(path, version, [*DOCUMENTS, *COMPAT_DOCUMENTS])
    index = CorpusIndex(path)
    for query, title, _ in FOLDED_QUERIES:
        assert titles(index, query) == [title], query
    assert titles(index, "ＰＹＴＨＯＮ") == ["Full-width"] and set(titles(index, "首都")) == {"東京", "北京"}
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    index = CorpusIndex(path)  # opened again: nothing indexed twice
    assert titles(index, "カタカナ") == ["Half-width"] and titles(index, "finance") == ["Ligature"]
    index.add([], source="old.md")  # the file is emptied: its documents go, told to FTS5 as it indexed them
    assert index.count() == 0
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE VIRTUAL TABLE temp.terms USING fts5vocab(main, docs_fts, row)")
        assert db.execute("SELECT term FROM temp.terms").fetchall() == []


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


@pytest.mark.parametrize(("version", "found"), [
    (0, {"volcanoes": ["Volcanoes"]}),
    # built before folding: searched as it was built, a query as written (folded, ＰＹＴＨＯＮ would find nothing)
    (2, {"volcanoes": ["Volcanoes"], "ＰＹＴＨＯＮ": ["Full-width"], "ｶﾀｶﾅ": ["Half-width"], "长城": ["北京"]}),
    # built before documents' places were recorded: searched as a new one, and nothing to warn of
    (3, {"volcanoes": ["Volcanoes"], "python": ["Full-width"], "ｶﾀｶﾅ": ["Half-width"], "长城": ["北京"]}),
])
def test_an_older_index_on_a_read_only_volume_is_still_searched(version, found):
    # a volume mounted read-only (deploy/README): the upgrade cannot be written, the search must still work
    scratch = Path(tempfile.mkdtemp(prefix="heavy-corpus-ro-"))
    try:
        if version == 3:
            CorpusIndex(scratch / "old.sqlite").add([*DOCUMENTS, *COMPAT_DOCUMENTS])
            with closing(sqlite3.connect(scratch / "old.sqlite")) as db, db:
                db.executescript("DROP TABLE doc_files; DROP TABLE last_doc_id; PRAGMA user_version = 3;")
        else:
            write_old_index(scratch / "old.sqlite", version, [*DOCUMENTS, *COMPAT_DOCUMENTS])
        os.chmod(scratch / "old.sqlite", 0o444)
        os.chmod(scratch, 0o555)  # no journal may be created beside it either
        # root writes past file modes: it searches from a mount namespace where the dir is a read-only bind mount
        # (another user could not read a checkout under a private temp dir)
        read_only = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                     f'mount --bind "{scratch}" "{scratch}" && mount -o remount,bind,ro "{scratch}" && exec "$0" "$@"'
                     ] if os.geteuid() == 0 else []
        search = ("from heavy.corpus.index import CorpusIndex\n"
                  f"index = CorpusIndex({str(scratch / 'old.sqlite')!r})\n"
                  f"print({{q: [h.title for h in index.search(q, 5)] for q in {list(found)!r}}})")
        done = subprocess.run([*read_only, sys.executable, "-c", search], capture_output=True, text=True,
                              cwd=Path(__file__).parents[2], env={**os.environ, "PYTHONPATH": "."}, timeout=60)
        assert done.stdout.strip() == repr(found), done.stderr
        # the warning says what is found only as written until a rebuild: CJK words inside runs (before 2) and
        # compatibility forms (before 3)
        assert ("read-only" in done.stderr and "compatibility forms" in done.stderr) == (version < 3)
        assert ("found only as whole runs" in done.stderr) == (version == 0)
    finally:
        os.chmod(scratch, 0o755)
        shutil.rmtree(scratch)
