"""`heavy corpus add PATH` and `heavy corpus serve`: build the local corpus index and serve it on loopback."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from heavy.cli_options import PORTS
from heavy.config import Settings, get_settings
from heavy.corpus.documents import SUPPORTED_SUFFIXES, CorpusFormatError, corpus_files, file_name, read_file
from heavy.corpus.index import CorpusIndex, existing_index
from heavy.corpus.server import CorpusServer

DEFAULT_INDEX = "~/.local/share/heavy/corpus.sqlite"


def default_index_path(settings: Settings) -> Path:
    """HEAVY_CORPUS_INDEX, else the index under ~/.local/share."""
    return Path(settings.corpus_index or DEFAULT_INDEX).expanduser()


@dataclass(frozen=True)
class AddReport:
    files: int
    added: int
    duplicates: int
    removed: int  # documents no file holds any more: edited out of their file, or their file deleted
    total: int  # documents in the index afterwards


def corpus_add(path: Path | str, index_path: Path | str) -> AddReport:
    """Read every supported file under `path` and add its documents to the index at `index_path`; of a directory,
    the files added from under it before and gone now are forgotten (their documents no other file holds, removed).
    A path with no supported file is an error and leaves no index behind (an empty one would be searched, finding
    nothing)."""
    files = corpus_files(Path(path))
    if not files:
        raise CorpusFormatError(f"no file to index under {path} (supported: {' '.join(sorted(SUPPORTED_SUFFIXES))}); "
                                "no index was written")
    index = CorpusIndex(index_path)
    is_folder = Path(path).is_dir()
    scope = str(Path(path).resolve() if is_folder else file_name(Path(path)))  # the names this add may replace
    index.adopt_relative_files(scope)
    added = duplicates = removed = 0
    present = [file_name(file) for file in files]
    for file in present:
        counts = index.add(read_file(file), source=str(file))
        added, duplicates, removed = added + counts.added, duplicates + counts.duplicates, removed + counts.removed
    if is_folder:
        removed += index.forget_files(scope, {str(file) for file in present})
    return AddReport(files=len(files), added=added, duplicates=duplicates, removed=removed, total=index.count())


corpus_app = typer.Typer(help="Build and serve the local search corpus.", no_args_is_help=True)

IndexOption = Annotated[Path | None, typer.Option("--index", help="SQLite index file (env HEAVY_CORPUS_INDEX).")]


@corpus_app.command("add")
def add_command(path: Path, index: IndexOption = None) -> None:
    """Index HTML, Markdown, text and JSONL (title/text/url rows) files under PATH."""
    report = corpus_add(path, index or default_index_path(get_settings()))
    typer.echo(
        f"indexed {report.added} new documents from {report.files} files "
        f"({report.duplicates} duplicates skipped, {report.removed} no longer in a file removed); the index holds "
        f"{report.total}"
    )


@corpus_app.command("serve")
def serve_command(index: IndexOption = None, port: Annotated[int, typer.Option(**PORTS)] = 8765) -> None:
    """Serve the indexed documents as HTML pages on 127.0.0.1 until interrupted."""
    with CorpusServer(existing_index(index or default_index_path(get_settings())), port=port) as server:
        typer.echo(f"serving the corpus at {server.base_url}/doc/<id> (Ctrl-C to stop)")
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
