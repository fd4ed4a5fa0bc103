"""A document's address (/doc/<id> on the corpus server) across edits of its file: what an old report's link finds."""

import json
import random
import sqlite3
import urllib.error
import urllib.request
from contextlib import closing

import pytest

from heavy.corpus.commands import corpus_add
from heavy.corpus.documents import read_file
from heavy.corpus.index import SCHEMA_VERSION, CorpusIndex
from heavy.corpus.server import CorpusServer


def paragraphs(tag, n=12):
    return "\n\n".join(f"Run {k} of the {tag} campaign: " + "the cryostat held its temperature. " * 40
                       for k in range(n))  # each paragraph ~1,400 characters: the file is indexed in parts


def write_folder(root, lab_result="1.63 eV", katla="1918"):
    root.mkdir(exist_ok=True)
    (root / "meeting.md").write_text(f"# Lab meeting\n\nThe doped sample's band gap was {lab_result}.")
    (root / "log.txt").write_text(f"Beam log\n\n{paragraphs('first')}\n\nThe last run measured {lab_result}.")
    rows = [{"title": "Askja", "text": "Askja last erupted in 1961."},
            {"title": "Katla", "text": f"Katla last erupted in {katla}.", "url": "https://ex.org/katla"}]
    (root / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def addresses(index_path):
    """Each document's id by its title."""
    with closing(sqlite3.connect(index_path)) as db:
        return dict(db.execute("SELECT title, id FROM docs").fetchall())


def page(server, doc_id):
    with urllib.request.urlopen(server.doc_url(doc_id), timeout=5) as response:
        return response.read().decode()


def test_an_edited_files_pages_keep_their_addresses_and_show_what_the_file_holds_now(tmp_path):
    # an edited file's documents were indexed anew under new ids: every link to them in an earlier report was a 404
    root, index_path = tmp_path / "docs", tmp_path / "index.sqlite"
    write_folder(root)
    corpus_add(root, index_path)
    before = addresses(index_path)
    write_folder(root, lab_result="1.71 eV", katla="2025")
    rows = (root / "rows.jsonl").read_text().splitlines()
    (root / "rows.jsonl").write_text(f"{rows[1]}\n{rows[0]}\n")  # a row moved is the same row
    report = corpus_add(root, index_path)
    assert (report.added, report.replaced, report.removed) == (0, 3, 0)
    assert addresses(index_path) == before
    with CorpusServer(index_path) as server:
        assert "1.71 eV" in page(server, before["Lab meeting"]) and "1.63" not in page(server, before["Lab meeting"])
        last_part = max(title for title in before if title.startswith("Beam log"))
        assert "The last run measured 1.71 eV." in page(server, before[last_part])
        assert "2025" in page(server, before["Katla"])
        # a page gone is gone: its address is a 404, never another page's, even once more are added (SQLite gave a
        # new row the highest id plus one: the last page's, if it had been deleted)
        (root / "rows.jsonl").unlink()
        corpus_add(root, index_path)
        (root / "new.md").write_text("# Glovebox\n\nOxygen stays below 0.5 ppm.")
        corpus_add(root, index_path)
        assert addresses(index_path)["Glovebox"] > before["Katla"] == max(before.values())
        with pytest.raises(urllib.error.HTTPError, match="404"):
            page(server, before["Katla"])


def test_a_text_two_files_hold_keeps_its_address_for_the_file_not_edited(tmp_path):
    root, index_path = tmp_path / "docs", tmp_path / "index.sqlite"
    root.mkdir()
    for name in ("a.md", "copy.md"):
        (root / name).write_text("# Hekla\n\nHekla last erupted in 2000.")
    corpus_add(root, index_path)
    shared = addresses(index_path)["Hekla"]
    (root / "a.md").write_text("# Hekla\n\nHekla is a volcano.")
    assert corpus_add(root, index_path).added == 1
    assert CorpusIndex(index_path).get(shared).text.endswith("Hekla last erupted in 2000.")


def test_a_long_file_first_indexed_whole_keeps_its_address_as_its_first_part(tmp_path, monkeypatch):
    # a file longer than PART_CHARS indexed before it was cut into parts: its page's link found nothing after
    root, index_path = tmp_path / "docs", tmp_path / "index.sqlite"
    write_folder(root)
    monkeypatch.setattr("heavy.corpus.documents.PART_CHARS", 10**9)
    corpus_add(root, index_path)
    whole = addresses(index_path)["Beam log"]
    monkeypatch.undo()
    corpus_add(root, index_path)
    assert next(doc_id for title, doc_id in addresses(index_path).items()
                if title.startswith("Beam log (part 1 of ")) == whole


def as_schema_3(index_path):
    """The index as heavy wrote it before documents' places and the last id given were recorded."""
    with closing(sqlite3.connect(index_path)) as db, db:
        db.executescript("""
            CREATE TABLE old_files (file TEXT NOT NULL, doc_id INTEGER NOT NULL, PRIMARY KEY (file, doc_id))
                WITHOUT ROWID;
            INSERT INTO old_files SELECT file, doc_id FROM doc_files;
            DROP TABLE doc_files;
            ALTER TABLE old_files RENAME TO doc_files;
            CREATE INDEX doc_files_by_doc ON doc_files (doc_id);
            DROP TABLE last_doc_id;
            PRAGMA user_version = 3;
        """)


def test_an_index_built_before_places_were_recorded_keeps_its_addresses_too(tmp_path):
    root, index_path = tmp_path / "docs", tmp_path / "index.sqlite"
    write_folder(root)
    corpus_add(root, index_path)
    before = addresses(index_path)
    as_schema_3(index_path)
    write_folder(root, lab_result="1.71 eV", katla="2025")
    assert corpus_add(root, index_path).replaced == 3
    assert addresses(index_path) == before and user_version(index_path) == SCHEMA_VERSION


def user_version(index_path):
    with closing(sqlite3.connect(index_path)) as db:
        return db.execute("PRAGMA user_version").fetchone()[0]


def test_a_schema_3_index_that_is_only_searched_stays_one_an_older_heavy_reads(tmp_path):
    """Workers of two versions may share an index on one volume (a rolling upgrade). A worker of this version that
    opened a schema-3 index to search it upgraded it in place, and the older ones (session 45's: schema 3) then
    refused it, 'built by a newer heavy': their every search failed. It is searched as it is; an add upgrades it."""
    root, index_path = tmp_path / "docs", tmp_path / "index.sqlite"
    write_folder(root)
    corpus_add(root, index_path)
    found = [hit.doc_id for hit in CorpusIndex(index_path).search("band gap of the doped sample", 5)]
    assert found
    as_schema_3(index_path)
    with CorpusServer(index_path):  # a worker opens it for its pages and for its searches (heavy/toolbox.py)
        assert [hit.doc_id for hit in CorpusIndex(index_path).search("band gap of the doped sample", 5)] == found
    assert user_version(index_path) == 3
    corpus_add(root, index_path)
    assert user_version(index_path) == SCHEMA_VERSION


def test_a_file_moved_within_its_folder_keeps_its_pages_addresses(tmp_path):
    root, index_path = tmp_path / "docs", tmp_path / "index.sqlite"
    write_folder(root)
    corpus_add(root, index_path)
    before = addresses(index_path)
    (root / "2026").mkdir()
    (root / "meeting.md").rename(root / "2026" / "lab-meeting.md")
    assert corpus_add(root, index_path).added == 0 and addresses(index_path) == before


def notebook(paragraphs):
    return "Cryostat notebook\n\n" + "\n\n".join(paragraphs)


def entries(first, count):
    """Paragraphs of 200 to 1,400 characters, each its own text."""
    words = ("cryostat", "sample", "beam", "held", "its", "temperature", "the", "band", "gap", "of", "doped", "film",
             "measured", "at", "kelvin")
    rng = random.Random(first)
    return [f"Entry {k}: " + " ".join(rng.choice(words) for _ in range(rng.randint(30, 230))) + "."
            for k in range(first, first + count)]


def part_texts(index_path):
    """Each part's text by its id."""
    with closing(sqlite3.connect(index_path)) as db:
        return dict(db.execute("SELECT id, text FROM docs").fetchall())


def test_text_inserted_near_a_long_files_start_leaves_its_later_parts_at_their_addresses(tmp_path):
    # parts were cut every 6,000 characters: a paragraph inserted near the start moved what every later part held,
    # so an old report's link to part 3 showed the new part 3's text
    root, index_path = tmp_path / "docs", tmp_path / "index.sqlite"
    root.mkdir()
    paragraphs = entries(0, 60)
    (root / "notebook.md").write_text(notebook(paragraphs))
    corpus_add(root, index_path)
    before = part_texts(index_path)
    assert len(before) > 5

    inserted = "Inserted: the glovebox oxygen stayed below 0.5 ppm all week."
    (root / "notebook.md").write_text(notebook([paragraphs[0], inserted, *paragraphs[1:]]))
    report = corpus_add(root, index_path)
    assert (report.added, report.replaced, report.removed) == (0, 1, 0)
    after = part_texts(index_path)
    changed = [doc_id for doc_id, text in before.items() if after[doc_id] != text]
    assert len(changed) == 1 and inserted in after[changed[0]]  # the part it went into, at its address

    # a section long enough to add parts: every part after it keeps its address, under its new number
    section = entries(100, 15)
    (root / "notebook.md").write_text(notebook([paragraphs[0], *section, *paragraphs[1:]]))
    report = corpus_add(root, index_path)
    assert report.added >= 1 and report.removed == 0
    assert report.replaced == len(before)  # each old part has a new title, "(part k of n)"; the first, a new text too
    after = part_texts(index_path)
    # the part it went into, and now and then the next one (its start moved with the cut), show another text
    assert [doc_id for doc_id, text in before.items() if after[doc_id] != text] in (changed, [*changed, changed[0] + 1])
    assert min(set(after) - set(before)) > max(before)  # the new parts' addresses are new
    with CorpusServer(index_path) as server:
        last = max(before)
        assert before[last][-200:] in page(server, last) and f"of {len(after)})" in page(server, last)

    # the section taken out again: the new parts' addresses are 404s, and every old one shows its old text
    (root / "notebook.md").write_text(notebook(paragraphs))
    corpus_add(root, index_path)
    assert part_texts(index_path) == before


def test_a_long_file_cut_every_6000_characters_before_keeps_its_part_numbers_addresses(tmp_path, monkeypatch):
    # an index built before parts were cut where the text says: its long file is cut anew on its next add, each part
    # number's address given the text that part holds now (no schema change: nothing to upgrade)
    root, index_path = tmp_path / "docs", tmp_path / "index.sqlite"
    root.mkdir()
    (root / "notebook.md").write_text(notebook(entries(0, 60)))
    monkeypatch.setattr("heavy.corpus.documents._split",
                        lambda text: [text[at:at + 6_000].strip() for at in range(0, len(text), 6_000)])
    corpus_add(root, index_path)
    by_number = {title.split(" (part ")[1]: doc_id for title, doc_id in addresses(index_path).items()}
    monkeypatch.undo()
    report = corpus_add(root, index_path)
    cut_anew = {title.split(" (part ")[1].split(" of ")[0]: doc_id for title, doc_id in addresses(index_path).items()}
    assert len(cut_anew) > len(by_number) and report.replaced == len(by_number) and report.removed == 0
    assert all(cut_anew[number.split(" of ")[0]] == doc_id for number, doc_id in by_number.items())


def ids_by_text(index_path):
    with closing(sqlite3.connect(index_path)) as db:
        return dict(db.execute("SELECT text, id FROM docs").fetchall())


def write_rows(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_a_jsonl_rows_id_names_its_address_and_rows_sharing_a_place_each_keep_their_own(tmp_path):
    # rows were placed by url, else title: an edited title moved a row to a new address (the old one a 404), and
    # the chunks of one page (rows sharing its url and title) shared a place, so a chunk inserted above them took the
    # first one's address, that one the second's...
    root, index_path = tmp_path / "docs", tmp_path / "index.sqlite"
    root.mkdir()
    katla = {"url": "https://ex.org/katla", "title": "Katla"}
    rows = [{"id": "askja", "title": "Askja", "text": "Askja last erupted in 1961."},
            {"id": 7, "title": "Hekla", "text": "Hekla last erupted in 2000."},
            *({**katla, "text": f"Katla, chunk {n}: it last erupted in 1918."} for n in (1, 2, 3)),
            {"title": "Grimsvotn", "text": "Grimsvotn last erupted in 2011."}]
    write_rows(root / "rows.jsonl", rows)
    corpus_add(root, index_path)
    before = ids_by_text(index_path)
    assert len(before) == 6
    edited = [{"id": "askja", "title": "Askja volcano", "text": "Askja last erupted in 1961, and before in 1875."},
              {"id": 7, "title": "Hekla volcano", "text": "Hekla last erupted in 2000."},
              {**katla, "text": "Katla, a new first chunk."}, *rows[2:5],
              {"title": "Grímsvötn", "text": "Grimsvotn last erupted in 2011."}]  # its title edited, not its text
    write_rows(root / "rows.jsonl", edited)
    report = corpus_add(root, index_path)
    assert (report.added, report.replaced, report.removed) == (1, 3, 0)
    after = ids_by_text(index_path)
    assert after["Askja last erupted in 1961, and before in 1875."] == before["Askja last erupted in 1961."]
    assert {text: after[text] for text in before if text in after} == {
        text: doc_id for text, doc_id in before.items() if not text.startswith("Askja")}
    assert after["Katla, a new first chunk."] > max(before.values())
    with closing(sqlite3.connect(index_path)) as db:
        assert sorted(place for (place,) in db.execute("SELECT place FROM doc_files")) == [
            "#2 url https://ex.org/katla", "#3 url https://ex.org/katla", "#4 url https://ex.org/katla",
            "id 7", "id askja", "title Grímsvötn", "url https://ex.org/katla"]
    write_rows(root / "rows.jsonl", rows)  # as it was: each text at its first address again, the new chunk gone
    assert corpus_add(root, index_path).removed == 1
    assert ids_by_text(index_path) == before


def parts_of(path):
    return [document.text for document in read_file(path)]


def test_a_word_changed_within_a_paragraph_changes_the_text_of_the_part_it_is_in_only(tmp_path):
    # whether a part started at a paragraph was drawn by the hash of all its text: a word changed anywhere in it drew
    # it anew, and in about one edit in five the cut moved, changing the next part's text (its address) too
    path = tmp_path / "notebook.md"
    paragraphs = entries(0, 60)
    path.write_text(notebook(paragraphs))
    before = parts_of(path)
    assert len(before) > 5
    for number, paragraph in enumerate(paragraphs):
        words = paragraph.split(" ")
        middle = len(words) // 2
        words[middle] = words[middle][::-1] if words[middle] != words[middle][::-1] else words[middle].upper()
        path.write_text(notebook([*paragraphs[:number], " ".join(words), *paragraphs[number + 1:]]))
        assert len(set(before) - set(parts_of(path))) == 1, number


def test_a_part_full_before_its_text_picks_a_cut_is_cut_where_its_text_says(tmp_path, monkeypatch):
    # a part with no place its text picks was cut just before the paragraph that would overflow it: a paragraph
    # inserted above moved that cut, so the next part started elsewhere, and so on through every such part
    monkeypatch.setattr("heavy.corpus.documents.CUT_SPACING", 10**12)  # no paragraph picked: every part is full
    path = tmp_path / "notebook.md"
    paragraphs = entries(0, 60)
    path.write_text(notebook(paragraphs))
    before = parts_of(path)
    assert len(before) > 5
    for inserted in entries(200, 10):  # the part it goes into changes, and now and then the next: no more
        path.write_text(notebook([paragraphs[0], inserted, *paragraphs[1:]]))
        assert len(set(before) - set(parts_of(path))) <= 2, inserted[:10]
