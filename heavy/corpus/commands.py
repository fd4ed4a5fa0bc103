"""`heavy corpus add PATH` and `heavy corpus serve`: build the local corpus index and serve it on loopback."""

from __future__ import annotations

import contextlib
import os
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from heavy.cli_options import PORTS
from heavy.config import Settings, get_settings
from heavy.corpus.documents import (
    SUPPORTED_SUFFIXES,
    CorpusFormatError,
    file_name,
    find_files,
    read_file,
    shown,
)
from heavy.corpus.index import CorpusIndex, existing_index
from heavy.corpus.server import CorpusServer


def default_index_path(settings: Settings) -> Path:
    """HEAVY_CORPUS_INDEX, else heavy/corpus.sqlite in the XDG data folder: $XDG_DATA_HOME when set to an absolute
    path (the spec ignores a relative one), else ~/.local/share."""
    if settings.corpus_index:
        return Path(settings.corpus_index).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME", "")
    data_home = Path(xdg) if os.path.isabs(xdg) else Path("~/.local/share").expanduser()
    return data_home / "heavy" / "corpus.sqlite"


@dataclass(frozen=True)
class AddReport:
    files: int
    added: int
    duplicates: int
    removed: int  # documents no file holds any more: edited out of their file, or their file deleted
    total: int  # documents in the index afterwards
    replaced: int = 0  # documents whose place in their file holds another text now, indexed at the same address
    textless: tuple[str, ...] = ()  # files read that hold no text (empty, binary): nothing of theirs is indexed
    unread: tuple[str, ...] = ()  # why each file that could not be read was not: what it held before stays
    other_types: tuple[str, ...] = ()  # the suffixes of the folder's files of a type it does not read, one a file
    hidden: tuple[tuple[str, int], ...] = ()  # hidden folders and files passed over, and the files each holds
    ignored: tuple[tuple[str, int], ...] = ()  # as `hidden`, those a .gitignore ignores or a tool's (node_modules/)


def corpus_add(path: Path | str, index_path: Path | str, include_hidden: bool = False,
               include_ignored: bool = False) -> AddReport:
    """Read every supported file under `path` and add its documents to the index at `index_path`; of a directory,
    the files added from under it before and gone now are forgotten (their documents no other file holds, removed).
    A file that cannot be read is passed over, named in `unread`, and the rest added. A path with no supported file
    is an error, and one with nothing to index leaves no new index behind (an empty one would be searched, finding
    nothing). Hidden folders and files under a folder are passed over unless `include_hidden`, and those its
    .gitignore files ignore or a tool's (node_modules/) unless `include_ignored` (find_files)."""
    found = find_files(Path(path), include_hidden, include_ignored)
    unlisted = [f"{shown(error.filename)}: {error.strerror}, its files were not read" for error in found.unlisted]
    if not (files := found.files) and unlisted:
        raise CorpusFormatError(f"no file to index under {shown(path)}: {'; '.join(unlisted)}")
    if not files:
        counts = {why: sum(count for _, count in names) for why, names in (("hidden", found.hidden),
                                                                           ("ignored", found.ignored))}
        passed_over = "".join(f"; {count} {why}, which --include-{why} indexes"
                              for why, count in counts.items() if count)
        raise CorpusFormatError(f"no file to index under {shown(path)} (supported: "
                                f"{' '.join(sorted(SUPPORTED_SUFFIXES))}{passed_over}); no index was written")
    new_index = not Path(index_path).exists()
    index = CorpusIndex(index_path)
    is_folder = Path(path).is_dir()
    scope = shown(Path(path).resolve() if is_folder else file_name(Path(path)))  # the names this add may replace
    index.adopt_relative_files(scope)
    added = duplicates = removed = replaced = 0
    textless, unread, refused = [], unlisted, None
    present = {file_name(file): True for file in files}  # False: deleted since the folder was listed
    with index.adding() as add:
        for file in present:
            # one file of a folder that cannot be read (a JSONL row without text) stopped the add there: the files
            # after it were not indexed, nor deleted ones forgotten. Its savepoint undone, it keeps what it held
            try:
                counts = add(read_file(file), shown(file))
            except (CorpusFormatError, OSError) as exc:
                if is_folder and isinstance(exc, FileNotFoundError):
                    present[file] = False  # forgotten as a file deleted before: it was "could not be read", kept
                    continue
                why = shown(str(exc))  # a CorpusFormatError's names the file
                unread.append(why if shown(file) in why else f"{shown(file)}: {why}")
                refused = None if is_folder else exc  # the file named: its error is the answer
                continue
            added, duplicates, removed = added + counts.added, duplicates + counts.duplicates, removed + counts.removed
            replaced += counts.replaced
            if counts.added + counts.duplicates + counts.replaced == 0:
                textless.append(shown(file))
    if is_folder:
        # a folder that could not be listed still holds its files: forgetting them would empty a search of them
        removed += index.forget_files(scope, {shown(file) for file, listed in present.items() if listed},
                                      kept_under={shown(Path(error.filename).resolve()) for error in found.unlisted})
    if (total := index.count()) == 0 and new_index:  # nothing to search: as of a path with no supported file, no index
        Path(index_path).unlink()
    if refused is not None:
        raise refused
    return AddReport(files=sum(present.values()), added=added, duplicates=duplicates, removed=removed, total=total,
                     replaced=replaced, textless=tuple(textless), unread=tuple(unread),
                     other_types=found.other_types, hidden=found.hidden, ignored=found.ignored)


corpus_app = typer.Typer(help="Build and serve the local search corpus.", no_args_is_help=True)

IndexOption = Annotated[Path | None, typer.Option("--index", help="SQLite index file (env HEAVY_CORPUS_INDEX).")]


@corpus_app.command("add")
def add_command(
    path: Path, index: IndexOption = None,
    include_hidden: Annotated[bool, typer.Option("--include-hidden", help="Also index files in hidden folders "
                                                 "(.obsidian) and hidden files under PATH.")] = False,
    include_ignored: Annotated[bool, typer.Option("--include-ignored", help="Also index what PATH's .gitignore "
                                                  "files ignore, and vendored or generated folders (node_modules, "
                                                  "__pycache__, a virtualenv, a cache).")] = False,
) -> None:
    """Index HTML, Markdown, text and JSONL (text rows, with optional title, url, id) files under PATH."""
    report = corpus_add(path, index or default_index_path(get_settings()), include_hidden, include_ignored)
    typer.echo(
        f"indexed {report.added} new documents from {report.files} files "
        f"({report.duplicates} already indexed, {report.replaced} edited, {report.removed} no longer in a file "
        f"removed); the index holds "
        f"{report.total}"
    )
    # what was not indexed, said: a folder of PDFs, a binary file, a bad JSONL row were passed over in silence
    if report.other_types:
        kinds = ", ".join(f"{count} {suffix or '(no suffix)'}"
                          for suffix, count in Counter(report.other_types).most_common())
        typer.echo(f"not indexed, of a type corpus add does not read: {kinds} (it reads "
                   f"{' '.join(sorted(SUPPORTED_SUFFIXES))})", err=True)
    for why, passed_over, saying in (("hidden", report.hidden, "hidden"),
                                     ("ignored", report.ignored, "ignored (.gitignore, vendored or generated)")):
        if passed_over:
            named = tuple(f"{name} ({count} file{'s' * (count > 1)})" for name, count in passed_over)
            typer.echo(f"not indexed, {saying}: {_listed(named)} (--include-{why} indexes them)", err=True)
    if report.textless:
        typer.echo(f"not indexed, no text (empty or binary): {_listed(report.textless)}", err=True)
    for why in report.unread:
        typer.echo(f"not indexed, could not be read: {why} (what an earlier add read of it stays)", err=True)
    if report.unread:
        raise typer.Exit(1)


def _listed(files: tuple[str, ...], shown: int = 5) -> str:
    more = f" and {len(files) - shown} more" if len(files) > shown else ""
    return ", ".join(files[:shown]) + more


@corpus_app.command("serve")
def serve_command(index: IndexOption = None, port: Annotated[int, typer.Option(**PORTS)] = 8765) -> None:
    """Serve the indexed documents as HTML pages on 127.0.0.1 until interrupted."""
    with CorpusServer(existing_index(index or default_index_path(get_settings())), port=port) as server:
        typer.echo(f"serving the corpus at {server.base_url}/doc/<id> (Ctrl-C to stop)")
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
