"""A researcher's own folder through `heavy corpus add`: what each kind of file becomes, and what the add says."""

import os
import random
import resource
import signal
import socket
import sqlite3
import string
import struct
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from heavy.corpus import commands
from heavy.corpus.commands import corpus_add, corpus_app
from heavy.corpus.documents import PART_CHARS, CorpusFormatError, read_documents
from heavy.corpus.index import CorpusIndex
from heavy.corpus.server import CorpusServer
from heavy.toolbox import local_corpus_tools
from heavy.tools.base import ToolContext


def test_a_markdown_files_front_matter_names_it_and_its_fields_stay_searchable(tmp_path):
    # the first line named a Markdown document: every file with front matter was titled "---", and so were the
    # search hits and the report's sources citing it
    root = tmp_path / "notes"
    root.mkdir()
    (root / "meeting.md").write_text(
        "---\ntitle: \"Lab meeting, 3 November\"\nauthor: R. Okafor\ndate: 2026-11-03\n---\n\n"
        "# Calibration drift\n\nThe Raman spectrometer drifted by 4.2 wavenumbers.\n")
    (root / "untitled.md").write_text("---\r\ntags: [xrd]\r\n---\r\n# XRD booking\r\n\r\nSix hours a day at most.\r\n")
    (root / "rule.md").write_text("# Horizontal rules\n\n---\n\ntitle: not front matter\n")
    docs = {d.title: d.text for d in read_documents(root)}
    assert docs == {
        "Lab meeting, 3 November": "author: R. Okafor\ndate: 2026-11-03\n\n# Calibration drift\n\n"
                                   "The Raman spectrometer drifted by 4.2 wavenumbers.",
        "XRD booking": "tags: [xrd]\n\n# XRD booking\n\nSix hours a day at most.",
        "Horizontal rules": "# Horizontal rules\n\n---\n\ntitle: not front matter",
    }
    corpus_add(root, tmp_path / "index.sqlite")
    index = CorpusIndex(tmp_path / "index.sqlite")
    assert [hit.title for hit in index.search("Okafor Raman", k=3)] == ["Lab meeting, 3 November"]


def test_a_folder_add_reads_past_a_bad_file_and_says_what_it_did_not_index(tmp_path):
    # a JSONL row without "text" stopped the add at its file: the files after it were not indexed, a deleted file
    # not forgotten; and a binary .txt, an empty file, a folder's PDFs were passed over without a word
    root = tmp_path / "lab"
    (root / "notes").mkdir(parents=True)
    (root / "notes" / "gone.md").write_text("# Old protocol\n\nAnneal at 200 °C.")
    index = tmp_path / "index.sqlite"
    assert corpus_add(root, index).total == 1
    (root / "notes" / "gone.md").unlink()
    (root / "a-papers.jsonl").write_text('{"title": "Humidity", "body": "MAPbI3 films degraded in 48 hours."}\n')
    (root / "notes" / "glovebox.md").write_text("# Glovebox\n\nOxygen must stay below 0.5 ppm.")
    (root / "notes" / "dump.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (root / "notes" / "empty.md").write_text("")
    (root / "paper.pdf").write_bytes(b"%PDF-1.7")
    (root / "thesis.pdf").write_bytes(b"%PDF-1.7")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main")

    result = CliRunner().invoke(corpus_app, ["add", str(root), "--index", str(index)])

    assert result.exit_code == 1, result.output
    assert [hit.title for hit in CorpusIndex(index).search("oxygen glovebox anneal protocol", k=5)] == ["Glovebox"]
    assert "indexed 1 new documents from 4 files (0 already indexed, 0 edited, 1 no longer in a file removed); the " \
           "index holds 1" in result.stdout
    unread, textless, other = (
        f"not indexed, could not be read: {root / 'a-papers.jsonl'}:1: a row must be an object with a string 'text' "
        "(and optional title, url, id); this one has 'title', 'body'",
        f"not indexed, no text (empty or binary): {root / 'notes' / 'dump.txt'}, {root / 'notes' / 'empty.md'}",
        "not indexed, of a type corpus add does not read: 2 .pdf (it reads .htm .html .jsonl .markdown .md .txt)")
    assert all(line in result.stderr for line in (unread, textless, other)), result.stderr
    assert result.stdout.count("\n") == 1  # the rest went to stderr
    # unchanged, the folder's files are what the index holds: "duplicates skipped" said otherwise
    again = CliRunner().invoke(corpus_app, ["add", str(root), "--index", str(index)]).stdout
    assert again.startswith("indexed 0 new documents from 4 files (1 already indexed, 0 edited, 0 no longer in a file "
                            "removed)")


def test_adding_only_files_with_nothing_to_index_leaves_no_index(tmp_path):
    # an empty index was left behind: searched, it finds nothing, and the next start refuses it
    (tmp_path / "bad.jsonl").write_text('{"title": "no text here"}\n')
    (tmp_path / "empty.md").write_text("\n")
    index = tmp_path / "index.sqlite"
    assert corpus_add(tmp_path / "empty.md", index).total == 0 and not index.exists()
    with pytest.raises(CorpusFormatError, match=r"bad.jsonl:1: a row must be an object with a string 'text' \(and "
                                                r"optional title, url, id\); this one has 'title'$"):
        corpus_add(tmp_path / "bad.jsonl", index)
    assert not index.exists()


def test_a_large_files_page_closed_early_by_its_reader_prints_nothing(tmp_path, capfd):
    # open_page stops reading a page at its download cap (2 MB) and closes: the page server printed a
    # ConnectionResetError traceback into `heavy ask`'s terminal for every page of a large file opened
    big = tmp_path / "log.txt"
    big.write_text("Beam campaign log\n" + "run: photon lattice detector band gap\n" * 250_000)  # 9.5 MB
    corpus_add(big, tmp_path / "index.sqlite")
    with CorpusServer(tmp_path / "index.sqlite") as server:
        with socket.create_connection(server.address) as reader:
            reader.sendall(b"GET /doc/1 HTTP/1.1\r\nHost: corpus\r\n\r\n")
            assert reader.recv(65536).startswith(b"HTTP/1.0 200")
            # closed with unread data: a reset, as httpx's close of a cut download is
            reader.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        while any(thread.name.endswith("(process_request_thread)") for thread in threading.enumerate()):
            time.sleep(0.01)  # the page's handler, meeting the closed connection
    assert capfd.readouterr().err == ""


@pytest.mark.anyio
async def test_a_large_file_is_indexed_in_parts_each_of_which_open_page_reads_whole(tmp_path):
    # indexed whole, an 11 MB lab log was found by a search, but open_page showed its first 8,000 characters: the
    # result at its end could be neither read nor cited
    lines = "".join(f"run {n}: photon lattice detector band gap {n * 7 % 13}\n" for n in range(2000))
    (tmp_path / "log.txt").write_text(f"Beam campaign log\n\n{lines}\nThe doped sample's band gap was 1.63 eV.\n")
    index = tmp_path / "index.sqlite"
    report = corpus_add(tmp_path / "log.txt", index)
    parts = list(read_documents(tmp_path / "log.txt"))
    assert report.added == len(parts) > 1 and all(len(part.text) <= PART_CHARS for part in parts)
    assert "\n".join(part.text for part in parts).split() == (tmp_path / "log.txt").read_text().split()
    with local_corpus_tools(index) as tools:
        context = ToolContext(job_id="j", trajectory=0, allowed_tools=frozenset({"search", "open_page"}))
        found = await tools.call("search", {"query": "doped sample band gap eV"}, context)
        assert f"[1] Beam campaign log (part {len(parts)} of {len(parts)})" in found.text
        page = await tools.call("open_page", {"url": found.sources[0].url}, context)
    assert "The doped sample's band gap was 1.63 eV." in page.text and not page.truncated


def test_hidden_folders_and_files_are_passed_over_and_named_unless_asked_for(tmp_path):
    # a vault's .obsidian/ settings, a notebook folder's .ipynb_checkpoints/ copies, a checkout's .git/ and .venv/
    # were indexed as the user's documents, found by searches beside the notes they copy
    root, index = tmp_path / "vault", tmp_path / "index.sqlite"
    for name, text in (("cryostat.md", "# Cryostat\n\nThe cryostat holds 4 K."),
                       (".obsidian/workspace.md", "# Workspace\n\nleft pane: cryostat"),
                       ("notes/.ipynb_checkpoints/run-checkpoint.md", "# Run\n\nThe cryostat held 5 K."),
                       ("notes/run.md", "# Run\n\nThe cryostat held 4 K."), (".draft.md", "# Draft\n\ncryostat?"),
                       (".git/description", "Unnamed repository")):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    result = CliRunner().invoke(corpus_app, ["add", str(root), "--index", str(index)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("indexed 2 new documents from 2 files")
    assert result.stderr == ("not indexed, hidden: .draft.md (1 file), .obsidian/ (1 file), "
                             "notes/.ipynb_checkpoints/ (1 file) (--include-hidden indexes them)\n")
    assert sorted(hit.title for hit in CorpusIndex(index).search("cryostat", k=10)) == ["Cryostat", "Run"]
    assert corpus_add(root, index, include_hidden=True).added == 3
    assert corpus_add(root, index).removed == 3  # as were they deleted: no longer what the folder's add indexes
    (tmp_path / "settings" / ".obsidian").mkdir(parents=True)
    (tmp_path / "settings" / ".obsidian" / "app.md").write_text("# App\n\nDark theme.")
    with pytest.raises(CorpusFormatError, match="1 hidden, which --include-hidden indexes"):
        corpus_add(tmp_path / "settings", tmp_path / "other.sqlite")


def test_a_folder_of_many_files_is_added_in_a_few_commits(tmp_path, monkeypatch):
    # each file was its own transaction: a commit waits for the disk (24 ms here), so adding a folder of 3,000 notes
    # took 70 s and adding it again unchanged 62 s; now 1.7 s and 0.9 s
    root = tmp_path / "notes"
    root.mkdir()
    for n in range(450):
        (root / f"{n}.md").write_text(f"# Note {n}\n\nThe cryostat run {n} held {n % 7} K.")
    commits = []
    connect = sqlite3.connect

    def traced(*args, **kwargs):
        db = connect(*args, **kwargs)
        db.set_trace_callback(lambda statement: commits.append(statement) if statement == "COMMIT" else None)
        return db

    monkeypatch.setattr("heavy.corpus.index.sqlite3.connect", traced)
    assert corpus_add(root, tmp_path / "index.sqlite").added == 450
    assert len(commits) <= 6, len(commits)  # 450 files, 200 a commit; opening, adopting, forgetting


def test_a_file_deleted_while_its_folder_is_added_is_forgotten_as_deleted(tmp_path, monkeypatch):
    # it was "could not be read" (exit 1), and what an earlier add read of it stayed in the index
    root, index = tmp_path / "notes", tmp_path / "index.sqlite"
    root.mkdir()
    for name in ("a", "b", "c"):
        (root / f"{name}.md").write_text(f"# {name}\n\nThe cryostat note {name}.")
    corpus_add(root, index)
    read_file = commands.read_file

    def deleted_first(file):
        if file.name == "a.md":
            file.unlink()  # an editor's save (write a temporary file, rename it over) or a sync client, meanwhile
        return read_file(file)

    monkeypatch.setattr(commands, "read_file", deleted_first)
    result = CliRunner().invoke(corpus_app, ["add", str(root), "--index", str(index)])
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout.startswith("indexed 0 new documents from 2 files (2 already indexed, 0 edited, 1 no longer")
    assert sorted(hit.title for hit in CorpusIndex(index).search("cryostat", k=5)) == ["b", "c"]


def test_a_folder_that_cannot_be_listed_is_named_and_its_files_are_not_forgotten(tmp_path):
    # the walk passed over a folder it may not list (its mode changed, a mount gone stale) in silence, and the add
    # then forgot every file indexed from it, as if deleted: searches of them found nothing, with exit 0
    (tmp_path / "docs" / "locked").mkdir(parents=True)
    (tmp_path / "docs" / "open.md").write_text("# Open\n\nThe cryostat holds 4 K.")
    (tmp_path / "docs" / "locked" / "kept.md").write_text("# Kept\n\nThe cryostat held 5 K.")
    # root reads past file modes; without the two capabilities that let it, it is held to them as any owner is (a
    # user of its own would not reach a checkout in a 0700 directory to run heavy)
    as_owner = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []

    def add():
        return subprocess.run(
            [*as_owner, sys.executable, "-c", "from heavy.corpus.commands import corpus_app; corpus_app()",
             "add", str(tmp_path / "docs"), "--index", str(tmp_path / "index.sqlite")],
            capture_output=True, text=True, cwd=Path(__file__).parents[2],
            env={**os.environ, "PYTHONPATH": "."}, timeout=60)

    try:
        assert add().returncode == 0
        os.chmod(tmp_path / "docs" / "locked", 0)
        done = add()
        assert done.returncode == 1 and "0 no longer in a file removed" in done.stdout, done
        assert f"could not be read: {tmp_path / 'docs' / 'locked'}: Permission denied" in done.stderr
        assert sorted(hit.title for hit in CorpusIndex(tmp_path / "index.sqlite").search("cryostat", k=5)) == [
            "Kept", "Open"]
    finally:
        os.chmod(tmp_path / "docs" / "locked", 0o755)


def test_an_add_the_disk_cannot_hold_says_why_in_one_line_and_keeps_what_the_index_held(tmp_path):
    # sqlite rolls the whole transaction back itself when a write fails (a full disk), and the file's savepoint
    # with it: undoing the savepoint again raised "no such savepoint: file", a traceback that hid the disk's error
    docs, index = tmp_path / "docs", tmp_path / "index.sqlite"
    docs.mkdir()
    (docs / "kept.md").write_text("# Kept\n\nThe cryostat holds 4 K.")

    def add(*, file_bytes: int):
        def limit_files():  # as a full disk: a write past the limit fails (EFBIG) rather than killing the process
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
        return subprocess.run([sys.executable, "-m", "heavy.cli", "corpus", "add", str(docs), "--index", str(index)],
                              capture_output=True, text=True, cwd=Path(__file__).parents[2], preexec_fn=limit_files,
                              env={**os.environ, "PYTHONPATH": "."}, timeout=60)

    assert add(file_bytes=resource.RLIM_INFINITY).returncode == 0
    words = random.Random(0)
    for k in range(20):  # 1.4 MB of text: more than the 200 KB the index may grow
        (docs / f"big{k}.md").write_text(f"# Big {k}\n\n" + " ".join(
            "".join(words.choices(string.ascii_lowercase, k=8)) for _ in range(8000)))
    full = add(file_bytes=index.stat().st_size + 200_000)
    assert full.returncode == 1 and full.stderr.strip() == "error: OperationalError: disk I/O error", full
    assert [hit.title for hit in CorpusIndex(index).search("cryostat", k=5)] == ["Kept"]
    assert CorpusIndex(index).count() == 1


def test_files_whose_names_are_not_utf8_are_indexed_named_and_forgotten_as_any_other(tmp_path):
    # an old archive's Latin-1 names on a UTF-8 system: Python holds their bytes as lone surrogates, which SQLite
    # refused, and the whole add stopped with a traceback at the first such file
    root, index = tmp_path / "archive", tmp_path / "index.sqlite"
    root.mkdir()
    folder = os.fsencode(root)
    for name, text in ((b"R\xe9sum\xe9.md", "# Resume\n\nThe cryostat held 4 K."), (b"vide\xe9.txt", ""),
                       (b".brouillon\xe9.md", "# Draft\n\nThe beam was on."), (b"ok.md", "# OK\n\nThe beam was on.")):
        with open(folder + b"/" + name, "w") as file:
            file.write(text)
    result = CliRunner().invoke(corpus_app, ["add", str(root), "--index", str(index)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("indexed 2 new documents from 3 files")
    assert result.stderr == ("not indexed, hidden: .brouillon\\xe9.md (1 file) (--include-hidden indexes them)\n"
                             f"not indexed, no text (empty or binary): {root}/vide\\xe9.txt\n")
    with closing(sqlite3.connect(index)) as db:
        assert db.execute("SELECT origin FROM docs WHERE title = 'Resume'").fetchone() == (f"{root}/R\\xe9sum\\xe9.md",)
    assert corpus_add(root, index).duplicates == 2  # the same name each time: nothing edited, nothing forgotten
    os.unlink(folder + b"/R\xe9sum\xe9.md")
    assert corpus_add(root, index).removed == 1


def test_a_jsonl_row_holding_half_a_utf16_pair_is_indexed_with_a_replacement_character(tmp_path):
    # JSON may escape half a pair alone ("\ud83d": an emoji cut in two by a tool cutting strings in UTF-16 units);
    # SQLite refused the row's text, and the whole add stopped with a traceback
    rows, index = tmp_path / "tweets.jsonl", tmp_path / "index.sqlite"
    rows.write_text('{"title": "Cut \\ud83d", "text": "A cut emoji \\ud83d and the cryostat.", "url": "u\\udc00"}\n'
                    '{"title": "Whole", "text": "A whole one \\ud83d\\ude00 and the cryostat."}\n')
    assert corpus_add(rows, index).added == 2
    hits = CorpusIndex(index).search("cryostat", k=5)
    assert sorted((hit.title, hit.url) for hit in hits) == [("Cut \ufffd", "u\ufffd"), ("Whole", "")]
    assert "A whole one \U0001f600" in CorpusIndex(index).get(hits[0].doc_id).text + CorpusIndex(index).get(
        hits[1].doc_id).text


def test_a_file_too_large_to_read_whole_is_named_and_the_rest_indexed(tmp_path, monkeypatch):
    # a file is read, decoded and cut whole, about five times its size in memory: a 2 GB log in a folder took the
    # machine's memory, and the add was killed with the folder's other files unindexed
    monkeypatch.setattr("heavy.corpus.documents.MAX_FILE_BYTES", 4_000)
    root, index = tmp_path / "repo", tmp_path / "index.sqlite"
    root.mkdir()
    (root / "server.log.txt").write_text("The cryostat held 4 K.\n" * 200)  # 4,600 bytes
    (root / "notes.md").write_text("# Notes\n\nThe cryostat held 4 K.")
    (root / "rows.jsonl").write_text('{"title": "Row", "text": "The cryostat held 4 K."}\n' * 100)  # row by row
    result = CliRunner().invoke(corpus_app, ["add", str(root), "--index", str(index)])
    assert result.exit_code == 1, result.output
    assert result.stdout.startswith("indexed 2 new documents from 3 files")
    assert result.stderr == (f"not indexed, could not be read: {root}/server.log.txt: 0 MiB, past the 0 MiB a file is "
                             "read whole (split it, or make it a JSONL file, read row by row) (what an earlier add "
                             "read of it stays)\n")
