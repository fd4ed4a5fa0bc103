"""Local corpus: reading HTML/Markdown/text/JSONL, the FTS5 BM25 index, the loopback page server, the CLI."""

import json
import sqlite3
import tracemalloc
import urllib.request
from contextlib import closing

import pytest
from typer.testing import CliRunner

from heavy.config import Settings, get_settings
from heavy.corpus.commands import corpus_add, corpus_app
from heavy.corpus.documents import CorpusFormatError, Document, read_documents
from heavy.corpus.index import CorpusIndex
from heavy.corpus.query import match_expression
from heavy.corpus.server import CorpusServer


@pytest.fixture
def corpus_dir(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "volcano.html").write_text(
        "<html><head><title>Volcanoes of Iceland</title></head><body><article>"
        "<p>Hekla is one of the most active volcanoes in Iceland, with many eruptions since 874.</p>"
        "</article></body></html>"
    )
    (root / "sub" / "glacier.md").write_text("# Vatnajökull\n\nThe largest glacier in Iceland covers a volcano.")
    (root / "notes.txt").write_text("Geysir\nThe Great Geysir is a hot spring in south-west Iceland.")
    rows = [
        {"title": "Ed Wood", "text": "Edward Davis Wood Jr. was an American filmmaker.", "url": "https://ex.org/ed"},
        {"title": "Scott Derrickson", "text": "Scott Derrickson is an American director and screenwriter."},
    ]
    (root / "people.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (root / "ignored.bin").write_bytes(b"\x00\x01")
    return root


def test_every_format_is_read_with_a_title(corpus_dir):
    docs = {d.title: d for d in read_documents(corpus_dir)}
    assert set(docs) == {"Volcanoes of Iceland", "Vatnajökull", "Geysir", "Ed Wood", "Scott Derrickson"}
    assert "Hekla is one of the most active volcanoes" in docs["Volcanoes of Iceland"].text
    assert docs["Ed Wood"].url == "https://ex.org/ed"
    assert docs["Scott Derrickson"].origin.endswith("people.jsonl:2")


def test_bad_jsonl_row_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "ok", "text": "fine"}\n{"title": "no text"}\n')
    with pytest.raises(CorpusFormatError, match=r"bad.jsonl:2"):
        list(read_documents(bad))


def test_add_deduplicates_and_bm25_ranks_the_relevant_page_first(corpus_dir, tmp_path):
    index_path = tmp_path / "index.sqlite"
    report = corpus_add(corpus_dir, index_path)
    assert (report.files, report.added, report.duplicates, report.total) == (4, 5, 0, 5)
    again = corpus_add(corpus_dir, index_path)
    assert (again.added, again.duplicates, again.total) == (0, 5, 5)

    hits = CorpusIndex(index_path).search("which volcano in Iceland erupts most?", k=3)
    assert hits[0].title == "Volcanoes of Iceland"
    assert "Hekla" in hits[0].snippet
    assert len(hits) == 3
    assert [h.score for h in hits] == sorted(h.score for h in hits)


def test_query_syntax_cannot_break_the_match_expression(corpus_dir, tmp_path):
    index = CorpusIndex(tmp_path / "i.sqlite")
    index.add(read_documents(corpus_dir))
    assert match_expression('Ed "Wood" AND -(NEAR') == '"ed" OR "wood" OR "and" OR "near"'
    assert index.search('"Ed Wood" AND -(NEAR:', k=2)[0].title == "Ed Wood"
    assert index.search("?!", k=2) == []


def test_a_question_searches_by_its_content_words_not_its_function_words(tmp_path):
    # in a small technical corpus "what", "does" and "do" are rare, so BM25 weighed them most: the yield page
    # ranked below pages that use those words
    from heavy.corpus.documents import Document

    pages = [("The yield statement", "A yield statement in a function makes it a generator."),
             ("Comparisons", "What do comparisons yield? What they do yield is what does: True or False."),
             ("The return statement", "A return statement leaves a function."),
             ("The pass statement", "The pass statement is a null operation in a function body."),
             *((f"Literal {n}", f"Literal number {n} is a constant.") for n in range(4))]
    index = CorpusIndex(tmp_path / "i.sqlite")
    index.add(Document(title=t, text=x, url="", origin="test") for t, x in pages)
    question = "What does the yield statement do in a Python function?"
    assert match_expression(question) == '"yield" OR "statement" OR "python" OR "function"'
    assert index.search(question, k=1)[0].title == "The yield statement"
    as_before = CorpusIndex(tmp_path / "i.sqlite", keep_function_words=True)  # how recorded runs searched
    assert as_before.search(question, k=1)[0].title == "Comparisons"
    # a capitalised function word inside the query is a name; a query of function words only keeps them all
    named = match_expression("Are Local H and For Against from the US?")
    assert named == '"local" OR "h" OR "for" OR "against" OR "us"'
    assert match_expression("what is it") == '"what" OR "is" OR "it"'


def test_a_keyword_that_is_a_function_word_is_searched_as_its_titles_phrase(tmp_path, monkeypatch):
    # seen in `heavy ask`: with "with" left out, the question below found pages on exceptions and statements, and
    # 'The "with" statement' 5th (scripts/probe_search.py)
    from heavy.corpus.documents import Document

    pages = [('The "with" statement', "The with statement wraps a block with methods of a context manager."),
             ("Exceptions", "An exception raised inside a block is handled by a handler; exceptions statement."),
             ('The "raise" statement', "The raise statement raises an exception inside a block."),
             ('The "try" statement', "The try statement handles an exception raised inside its block."),
             ("Membership", "The in operator tests membership; x in s.")]
    index = CorpusIndex(tmp_path / "i.sqlite")
    index.add(Document(title=t, text=x, url="", origin="test") for t, x in pages)
    question = "How does the with statement handle an exception raised inside its block?"
    assert match_expression(question) == ('title : "with statement" OR "with" OR "statement" OR "handle" OR '
                                          '"exception" OR "raised" OR "inside" OR "block"')
    assert index.search(question, k=1)[0].title == 'The "with" statement'
    monkeypatch.setattr("heavy.corpus.query.KEYWORD_WORDS", frozenset())  # "with" left out as any function word
    assert index.search(question, k=1)[0].title != 'The "with" statement'
    monkeypatch.undo()
    # "with" and "in" stay plain function words elsewhere
    assert match_expression("a town with a river in the north") == '"town" OR "river" OR "north"'


def test_server_serves_indexed_documents_as_html(corpus_dir, tmp_path):
    index_path = tmp_path / "index.sqlite"
    corpus_add(corpus_dir, index_path)
    hit = CorpusIndex(index_path).search("Ed Wood filmmaker", k=1)[0]
    with CorpusServer(index_path) as server:
        assert server.address[0] == "127.0.0.1"
        with urllib.request.urlopen(server.doc_url(hit.doc_id), timeout=5) as response:
            page = response.read().decode()
        assert "<title>Ed Wood</title>" in page and "American filmmaker" in page and "https://ex.org/ed" in page
        # an id past SQLite's integers (or past int()'s digits) closed the connection with no answer
        for path in ("/doc/999", "/doc/" + "9" * 20, "/doc/" + "9" * 5000, "/doc/%31", "/../etc/passwd"):
            with pytest.raises(urllib.error.HTTPError, match="404"):
                urllib.request.urlopen(f"{server.base_url}{path}", timeout=5)


def test_corpus_add_command(corpus_dir, tmp_path):
    result = CliRunner().invoke(corpus_app, ["add", str(corpus_dir), "--index", str(tmp_path / "cli.sqlite")])
    assert result.exit_code == 0, result.output
    assert "indexed 5 new documents from 4 files" in result.output


def test_the_corpus_index_is_a_setting_the_corpus_commands_read(corpus_dir, tmp_path, monkeypatch):
    # read from os.environ beside the Settings: a ConfigMap's HEAVY_CORPUS_INDEX was no field of theirs
    index = tmp_path / "set.sqlite"
    monkeypatch.setenv("HEAVY_CORPUS_INDEX", str(index))
    get_settings.cache_clear()
    try:
        assert Settings().corpus_index == str(index)
        result = CliRunner().invoke(corpus_app, ["add", str(corpus_dir)])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert CorpusIndex(index).count() == 5


def test_files_in_other_encodings_are_read_as_written_and_binary_ones_skipped(tmp_path):
    # read as UTF-8 with replacement: a BOM broke a JSONL file's first row and a Markdown heading's title, and a
    # Latin-1 file's "café" became "caf\ufffd", which no search for it found
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "bom.md").write_bytes(b"\xef\xbb\xbf# Heading with a BOM\n\nSome text.")
    (root / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"title": "Row one", "text": "The first row."}\n')
    (root / "latin1.txt").write_bytes("Le café de Flore\nUn café à Paris.".encode("latin-1"))
    (root / "windows.txt").write_bytes("Windows\nUnicode text from Notepad.".encode("utf-16"))
    (root / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    docs = {d.title: d.text for d in read_documents(root)}
    assert docs == {"Heading with a BOM": "# Heading with a BOM\n\nSome text.", "Row one": "The first row.",
                    "Le café de Flore": "Le café de Flore\nUn café à Paris.",
                    "Windows": "Windows\nUnicode text from Notepad."}
    index = CorpusIndex(tmp_path / "i.sqlite")
    index.add(read_documents(root))
    assert index.search("café", k=1)[0].title == "Le café de Flore"


def test_an_html_page_is_read_in_the_charset_it_declares(tmp_path):
    # a mirrored site's or a mailing-list archive's pages in Cyrillic, Shift_JIS or Latin-1, each declaring its
    # charset in a <meta>, were read as UTF-8, else Windows-1252: their words indexed as mojibake, found by no search
    root = tmp_path / "site"
    root.mkdir()
    pages = {"ru.html": ('<meta http-equiv="Content-Type" content="text/html; charset=windows-1251">', "Криостат",
                         "cp1251"),
             "ja.html": ('<meta charset="shift_jis">', "クライオスタット", "shift_jis"),
             "fr.html": ('<meta charset="us-ascii">', "Le café de Flore", "cp1252"),  # as browsers read it
             "plain.html": ("", "Le café de Flore", "utf-8")}
    for name, (meta, words, encoding) in pages.items():
        (root / name).write_bytes(f"<html><head>{meta}<title>{words}</title></head><body><p>{words}: "
                                  f"{name} held 4 K.</p></body></html>".encode(encoding))
    docs = {d.origin.rsplit("/", 1)[1]: d for d in read_documents(root)}
    for name, (_, words, encoding) in pages.items():
        assert (docs[name].title, f"{words}: {name} held 4 K." in docs[name].text) == (words, True), encoding


def test_a_text_file_naming_no_encoding_is_read_in_the_one_its_bytes_are_written_in(tmp_path):
    # read as UTF-8, else Windows-1252: a GBK Markdown file's Chinese was indexed as mojibake no search found, and a
    # UTF-8 file with one stray byte had every other accented letter turned to mojibake
    root = tmp_path / "corpus"
    root.mkdir()
    files = {"zh.md": ("# 长城\n\n长城是中国古代的军事防御工程，东起山海关，西至嘉峪关，全长两万多公里。", "gbk"),
             "ru.txt": ("Москва\nМосква — столица России, крупнейший по численности населения город страны.", "cp1251"),
             "ja.txt": ("東京\n東京は日本の首都であり、人口は約千四百万人で、世界有数の大都市である。", "shift_jis")}
    for name, (text, encoding) in files.items():
        (root / name).write_bytes(text.encode(encoding))
    (root / "stray.txt").write_bytes("Zürich\nZürich liegt am Zürichsee. ".encode() + b"\xff")
    docs = {d.title: d.text for d in read_documents(root)}
    for text, _ in files.values():
        title = text.lstrip("# ").split("\n")[0]
        assert docs[title] == text, title
    assert docs["Zürich"] == "Zürich\nZürich liegt am Zürichsee. \ufffd"
    index = CorpusIndex(tmp_path / "i.sqlite")
    index.add(read_documents(root))
    assert [index.search(word, k=1)[0].title for word in ("长城", "столица", "首都")] == ["长城", "Москва", "東京"]


def test_re_adding_an_edited_file_replaces_what_it_no_longer_holds(tmp_path, monkeypatch):
    # only new documents were added: the old text of an edited page stayed, found beside the new one
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "page.md").write_text("# Hekla\n\nHekla last erupted in 1991.")
    (root / "rows.jsonl").write_text(json.dumps({"title": "Katla", "text": "Katla last erupted in 1918."}) + "\n"
                                     + json.dumps({"title": "Askja", "text": "Askja last erupted in 1961."}) + "\n")
    index_path = tmp_path / "index.sqlite"
    assert corpus_add(root, index_path).total == 3
    (root / "page.md").write_text("# Hekla\n\nHekla last erupted in 2000.")
    (root / "rows.jsonl").write_text(json.dumps({"title": "Askja", "text": "Askja last erupted in 1961."}) + "\n"
                                     + json.dumps({"title": "Katla", "text": "Katla last erupted in 2025."}) + "\n")
    monkeypatch.chdir(root)  # the same files by another path
    again = corpus_add("rows.jsonl", index_path)
    assert (again.added, again.duplicates, again.replaced, again.removed, again.total) == (0, 1, 1, 0, 3)
    again = corpus_add(root / ".." / "corpus", index_path)
    assert (again.added, again.duplicates, again.replaced, again.removed, again.total) == (0, 2, 1, 0, 3)
    index = CorpusIndex(index_path)
    assert index.search("1991 1918", k=5) == []
    assert {hit.title for hit in index.search("2000 2025 1961", k=5)} == {"Hekla", "Katla", "Askja"}
    assert corpus_add(root, index_path).removed == 0


def test_adding_a_folder_again_forgets_its_deleted_files_but_not_what_another_file_still_holds(tmp_path):
    # `corpus add` only added: a page deleted from the folder stayed in the index, found by every search
    root, elsewhere = tmp_path / "corpus", tmp_path / "elsewhere.md"
    (root / "sub").mkdir(parents=True)
    for file, text in ((root / "hekla.md", "# Hekla\n\nHekla last erupted in 2000."), (elsewhere, "# Hekla\n\nHekla "
                       "last erupted in 2000."), (root / "askja.md", "# Askja\n\nAskja last erupted in 1961."),
                       (root / "sub" / "copy.md", "# Askja\n\nAskja last erupted in 1961."),
                       (root / "notes.txt", "Notes\nGeysir is a hot spring.")):
        file.write_text(text)
    (root / "rows.jsonl").write_text(json.dumps({"title": "Katla", "text": "Katla last erupted in 1918."}) + "\n")
    index_path = tmp_path / "index.sqlite"
    assert corpus_add(root, index_path).total == 4
    assert corpus_add(elsewhere, index_path).duplicates == 1  # Hekla, stored once, is held by two files
    (root / "askja.md").write_text("# Askja\n\nAskja is a caldera.")  # no longer holds what sub/copy.md holds
    assert corpus_add(root / "askja.md", index_path).removed == 0
    for file in ("hekla.md", "rows.jsonl"):
        (root / file).unlink()
    again = corpus_add(root, index_path)
    assert (again.removed, again.total) == (1, 4)  # Katla; Hekla stays for elsewhere.md
    index = CorpusIndex(index_path)
    assert index.search("1918", k=5) == [] and len(index.search("1961 2000 caldera", k=5)) == 3
    (root / "sub" / "copy.md").unlink()
    assert corpus_add(root, index_path).removed == 1 and index.search("1961", k=5) == []


def test_an_index_built_before_files_were_recorded_forgets_a_deleted_file_too(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "hekla.md").write_text("# Hekla\n\nHekla last erupted in 2000.")
    (root / "rows.jsonl").write_text(json.dumps({"title": "Katla", "text": "Katla last erupted in 1918."}) + "\n")
    corpus_add(root, tmp_path / "index.sqlite")
    with closing(sqlite3.connect(tmp_path / "index.sqlite")) as db:
        db.execute("DROP TABLE doc_files")  # as an index written before the table was
    (root / "rows.jsonl").unlink()
    assert corpus_add(root, tmp_path / "index.sqlite").removed == 1
    assert CorpusIndex(tmp_path / "index.sqlite").search("1918", k=5) == []


def test_jsonl_is_read_row_by_row_and_split_at_newlines_only(tmp_path):
    # str.splitlines of the whole file: a string holding U+2028 (written raw by ensure_ascii=False) was cut in two,
    # "not valid JSON"; and a file of millions of rows was held whole, twice (its bytes and its text)
    rows = tmp_path / "rows.jsonl"
    with rows.open("w", encoding="utf-8") as out:
        out.write(json.dumps({"title": "Separators", "text": "one\u2028two\x85three"}, ensure_ascii=False) + "\n")
        for n in range(20_000):
            out.write(json.dumps({"title": f"Row {n}", "text": f"Row {n} of a large file. " * 20}) + "\n")
    documents = read_documents(rows)
    assert next(documents).text == "one\u2028two\x85three"
    tracemalloc.start()
    try:
        assert sum(1 for _ in documents) == 20_000
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < rows.stat().st_size / 10, (peak, rows.stat().st_size)


def test_a_reference_corpus_build_cut_short_leaves_no_index_for_the_next_start(tmp_path, monkeypatch):
    # a Ctrl-C in the first `heavy up` or `heavy ask` left an empty index, which every later start took as built
    # and then refused: "holds no documents"
    from heavy.up import reference_corpus

    def interrupted(source, index_path):
        CorpusIndex(index_path)  # what corpus_add writes before the documents' transaction
        raise KeyboardInterrupt

    settings = Settings(home=str(tmp_path))
    with monkeypatch.context() as patched:
        patched.setattr("heavy.stdlib_corpus.corpus_add", interrupted)
        with pytest.raises(KeyboardInterrupt):
            reference_corpus(settings, print)
    assert list((tmp_path / "corpus").iterdir()) == []
    built = reference_corpus(settings, print)
    assert CorpusIndex(built).count() > 50


def test_a_symlinked_file_is_forgotten_when_its_link_is_deleted_or_moved(tmp_path):
    # its documents were recorded under the link's target, outside the folder: re-adding the folder never forgot them
    root, elsewhere = tmp_path / "corpus", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    (root / "hekla.md").write_text("# Hekla\n\nHekla last erupted in 2000.")
    (elsewhere / "katla.md").write_text("# Katla\n\nKatla last erupted in 1918.")
    (elsewhere / "askja.md").write_text("# Askja\n\nAskja last erupted in 1961.")
    (root / "volcano.md").symlink_to(elsewhere / "katla.md")
    index_path = tmp_path / "index.sqlite"
    assert corpus_add(root, index_path).total == 2
    (root / "volcano.md").unlink()
    (root / "volcano.md").symlink_to(elsewhere / "askja.md")  # the link now names another page
    assert corpus_add(root, index_path).replaced == 1  # volcano.md's page, Katla's address
    index = CorpusIndex(index_path)
    assert index.search("1918", k=5) == [] and [hit.title for hit in index.search("1961", k=5)] == ["Askja"]
    (root / "volcano.md").unlink()
    assert (corpus_add(root, index_path).removed, index.search("1961", k=5)) == (1, [])


def test_an_index_built_from_a_relative_path_forgets_edited_and_deleted_files(tmp_path, monkeypatch):
    # before files were named absolutely, `corpus add docs` recorded "docs/a.md": no later add ever matched it
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").mkdir()
    for name, text in (("a", "Zebras have stripes."), ("b", "Okapis live in forests."), ("c", "Tapirs swim.")):
        (tmp_path / "docs" / f"{name}.md").write_text(f"# {name}\n\n{text}")
    corpus_add("docs", "index.sqlite")
    with closing(sqlite3.connect("index.sqlite")) as db, db:
        db.execute("UPDATE docs SET origin = 'docs/' || title || '.md'")  # as that add wrote them
        db.execute("DROP TABLE doc_files")
    (tmp_path / "docs" / "a.md").write_text("# a\n\nZebras are grazers.")
    (tmp_path / "docs" / "b.md").unlink()
    again = corpus_add("docs", "index.sqlite")
    assert (again.removed, again.replaced) == (1, 1)
    index = CorpusIndex("index.sqlite")
    assert index.search("stripes", k=5) == index.search("okapis", k=5) == []
    assert [hit.title for hit in index.search("zebras", k=5)] == ["a"]
    (tmp_path / "docs" / "c.md").write_text("# c\n\nTapirs eat fruit.")  # by one file's path alone, too
    with closing(sqlite3.connect("index.sqlite")) as db, db:
        db.execute("UPDATE doc_files SET file = 'docs/c.md' WHERE file LIKE '%/docs/c.md'")
    assert corpus_add("docs/c.md", "index.sqlite").replaced == 1 and index.search("swim", k=5) == []


@pytest.mark.timeout(120, method="thread")  # FTS5 took over ten minutes, weighing each fragment by every hit
def test_a_huge_page_found_by_a_word_it_holds_everywhere_gets_a_snippet_of_its_rare_words(tmp_path):
    index = CorpusIndex(tmp_path / "i.sqlite")
    index.add([Document("Log", "The volcano was quiet that day. " * 200_000 + "Then Hekla erupted in 1991, at last."),
               Document("Hekla", "Hekla is a volcano in Iceland.")])
    hits = {hit.title: hit.snippet for hit in index.search("volcano Hekla 1991", k=2)}
    assert "Then Hekla erupted in 1991" in hits["Log"] and hits["Hekla"] == "Hekla is a volcano in Iceland."


def test_the_default_index_lives_in_the_xdg_data_folder(monkeypatch, tmp_path):
    from heavy.corpus.commands import default_index_path

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_index_path(Settings()) == tmp_path / "data" / "heavy" / "corpus.sqlite"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/data")  # the spec says to ignore a relative path
    assert default_index_path(Settings()) == tmp_path / "home" / ".local" / "share" / "heavy" / "corpus.sqlite"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_index_path(Settings()) == tmp_path / "home" / ".local" / "share" / "heavy" / "corpus.sqlite"
    assert default_index_path(Settings(corpus_index="~/mine.sqlite")) == tmp_path / "home" / "mine.sqlite"
