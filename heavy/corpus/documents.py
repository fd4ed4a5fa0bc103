"""Reading corpus documents from files: HTML, Markdown, plain text and JSONL rows."""

from __future__ import annotations

import json
import os
import re
import zlib
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from heavy.corpus.ignored import IgnoreRules, is_tool_folder
from heavy.tools.extract import html_to_markdown
from heavy.tools.fetch import body_encoding, bom_encoding, decode_body, undeclared_encoding

HTML_SUFFIXES = frozenset({".html", ".htm"})
MARKDOWN_SUFFIXES = frozenset({".md", ".markdown"})
TEXT_SUFFIXES = frozenset({".txt"})
JSONL_SUFFIXES = frozenset({".jsonl"})
SUPPORTED_SUFFIXES = HTML_SUFFIXES | MARKDOWN_SUFFIXES | TEXT_SUFFIXES | JSONL_SUFFIXES
# a file's text longer than this is indexed as parts of it, each a page of its own: open_page shows 8,000 characters of
# a page (ToolLimits.output_chars) less its header, so of an 11 MB lab log it read the first 8,000, and the rest,
# though searched, could be neither read nor cited. JSONL rows are the user's own units, kept whole
PART_CHARS = 6_000
# a file (not JSONL) is read, decoded and cut whole, which holds about five times its size: an 81 MB log took 394 MB,
# so a 2 GB one took the machine's memory and the add was killed, the folder's other files unindexed with it
MAX_FILE_BYTES = 256 << 20
_PART_BREAKS = ("\n\n", "\n", " ")  # a part ends at a paragraph, else a line, else a word
# where parts are cut is chosen by the text there, not by its position: cut every PART_CHARS, text inserted near a
# long file's start moved what every later part held, so an old link to its part 3 showed another text. A part is at
# least MIN_PART_CHARS long, then starts at a Markdown heading or at a piece of text its hash picks, about one every
# CUT_SPACING characters: an insertion or a deletion moves only the cuts near it
MIN_PART_CHARS = 1_500
CUT_SPACING = 2_000
# the hash that picks a piece is of its first and last CUT_HASH_ENDS characters, not of all of it: a sentence edited
# anywhere in a paragraph drew anew whether a part started there, and so changed two parts' texts, the edit's and its
# neighbour's (19% of random sentence edits of long files, 9% so: scripts/bench_part_edits.py); both ends, not the
# first characters alone, which a log's lines often share
CUT_HASH_ENDS = 16
_HEADING = re.compile(r"#{1,6}[ \t]")
# a Markdown file's YAML front matter (Jekyll, Hugo, Obsidian, Pandoc): fenced by "---" lines at its very start
_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?)^(?:---|\.\.\.)[ \t]*$\n?", re.DOTALL | re.MULTILINE)
_TITLE_FIELD = re.compile(r"^title:[ \t]*(.*?)[ \t]*$\n?", re.MULTILINE)
# the charsets an HTML page declares that browsers read as Windows-1252 (WHATWG's Encoding standard), by Python's
# names: a page declaring US-ASCII or ISO-8859-1 (a mailing-list archive's) often holds Windows-1252's quotes too
_WINDOWS_1252 = frozenset({"ascii", "iso8859-1", "cp1252"})
# half of a UTF-16 pair alone, as a JSON string may escape it ("\ud83d": an emoji cut in two by a tool that cuts
# strings by UTF-16 units); SQLite refused the row's text, and the add stopped with a traceback
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class CorpusFormatError(ValueError):
    """A corpus file that cannot be read as a document (names the file and row)."""


@dataclass(frozen=True)
class Document:
    title: str
    text: str
    url: str = ""  # the document's original address, when the source gives one
    origin: str = ""  # the file (and JSONL row) it was read from
    # where in its file it is, what its address (/doc/<id>) stays with when the file is edited: a file's part number
    # ("1" for a whole file), a JSONL row's id, else its url, else its title (its line moves as rows are added above
    # it; jsonl_place)
    place: str = ""

    def __post_init__(self) -> None:
        if not self.text.strip():
            raise CorpusFormatError(f"{self.origin or self.title!r}: document has no text")


@dataclass(frozen=True)
class FoundFiles:
    """What `corpus add` finds at a path."""
    files: list[Path]  # the supported files, in a stable order
    other_types: tuple[str, ...] = ()  # the suffix of each file of a type it does not read ("" for none), not hidden
    # hidden folders and files (.obsidian/, notes/.draft.md) passed over, each with how many supported files it holds
    hidden: tuple[tuple[str, int], ...] = ()
    unlisted: tuple[OSError, ...] = ()  # why each folder that could not be listed (no permission) was not
    ignored: tuple[tuple[str, int], ...] = ()  # as `hidden`, those a .gitignore ignores or a tool's (ignored.py)


def find_files(path: Path, include_hidden: bool = False, include_ignored: bool = False) -> FoundFiles:
    """The supported files at `path` (a file or a directory walked recursively, not into symlinked folders); under a
    directory, not those under a hidden folder or hidden themselves (.git, .obsidian, .venv: a tool's, not the user's
    documents; Obsidian's workspace and a checkout's vendored READMEs were indexed as notes) unless `include_hidden`,
    nor those its .gitignore files ignore or in a vendored or generated folder (node_modules/) unless
    `include_ignored`."""
    if path.is_file():
        if path.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise CorpusFormatError(f"{shown(path)}: unsupported file type (supported: {sorted(SUPPORTED_SUFFIXES)})")
        return FoundFiles([path])
    if not path.is_dir():
        raise FileNotFoundError(f"corpus path does not exist: {shown(path)}")
    files, others, unlisted = [], [], []
    passed_over = {"hidden": Counter[str](), "ignored": Counter[str]()}  # each with the supported files it holds

    def not_listed(error: OSError) -> None:  # os.walk passed over such a folder, in silence
        if not isinstance(error, FileNotFoundError):  # one deleted meanwhile is as deleted before
            unlisted.append(error)

    root = path.resolve()
    rules = {root: None if include_ignored else IgnoreRules.above(root)}  # what ignores in each folder walked
    under: dict[Path, tuple[str, str]] = {}  # a folder passed over, and each in it: why, and the name it is counted by
    for folder, folders, names in os.walk(path, onerror=not_listed):
        here = root / Path(folder).relative_to(path)
        if here in under:
            why, counted_as = under[here]
            under.update((here / inner, (why, counted_as)) for inner in folders)
            passed_over[why][counted_as] += sum(Path(name).suffix.lower() in SUPPORTED_SUFFIXES for name in names)
            continue
        here_rules = rules[here] and rules[here].within(here)
        for inner in folders:
            if why := _passed_over(here / inner, True, here_rules, include_hidden):
                under[here / inner] = (why, f"{shown((here / inner).relative_to(root))}/")
            else:
                rules[here / inner] = here_rules
        for name in names:
            file = Path(folder, name)
            supported = file.suffix.lower() in SUPPORTED_SUFFIXES
            if not file.is_file():
                continue
            if why := _passed_over(here / name, False, here_rules, include_hidden):
                if supported:
                    passed_over[why][shown((here / name).relative_to(root))] += 1
            elif supported:
                files.append(file)
            else:
                others.append(shown(file.suffix.lower()))
    hidden, ignored = (tuple(sorted((+passed_over[why]).items())) for why in ("hidden", "ignored"))  # + : held some
    return FoundFiles(sorted(files), tuple(sorted(others)), hidden, tuple(unlisted), ignored)


def _passed_over(path: Path, is_folder: bool, rules: IgnoreRules | None, include_hidden: bool) -> str | None:
    """Why a file or folder under a folder added is not indexed ("hidden", "ignored"), if it is not; `rules`: None
    when ignored ones are indexed."""
    if path.name.startswith(".") and not include_hidden:
        return "hidden"
    if rules is not None and (is_folder and is_tool_folder(path) or rules.ignores(path, is_folder)):
        return "ignored"
    return None


def file_name(file: Path) -> Path:
    """The name a file's documents are recorded under: absolute, its folders resolved (any path through them finds
    it), but a symlinked file named as the link, not its target: deleting the link from a corpus folder forgets it
    as deleting a file does (the target may be anywhere, where re-adding the folder never looked)."""
    return file.absolute().parent.resolve() / file.name


def shown(path: Path | str) -> str:
    """A path as text that can be stored and printed: in a name that is not UTF-8 (an old archive's Latin-1 names on
    a UTF-8 system), each byte that is not as \\xNN. Python holds such bytes as lone surrogates, which SQLite and
    the terminal refuse: one such file stopped a folder's add with a traceback."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def read_documents(path: Path) -> Iterator[Document]:
    for file in find_files(path).files:
        yield from read_file(file)


def read_file(file: Path) -> Iterator[Document]:
    """The documents of one file; none from a binary one (a NUL byte in its text; in JSONL, a row not JSON)."""
    if file.suffix.lower() in JSONL_SUFFIXES:
        yield from _jsonl_documents(file)
        return
    for document in _file_document(file):
        yield from _parts(document)


def _parts(document: Document) -> Iterator[Document]:
    """`document`, or, longer than PART_CHARS, its parts, titled "(part k of n)"."""
    if len(document.text) <= PART_CHARS:
        yield replace(document, place="1")
        return
    parts = _split(document.text)
    for number, part in enumerate(parts, start=1):
        yield replace(document, title=f"{document.title} (part {number} of {len(parts)})", text=part,
                      place=str(number))


def _split(text: str) -> list[str]:
    """`text` cut into parts of at most PART_CHARS, each of whole pieces (`_pieces`): before the first piece that
    starts one (`_cut_score`) once a part holds MIN_PART_CHARS; with none before a piece would overflow it, before the
    piece past MIN_PART_CHARS nearest to starting one (cut just before the overflow, the cut moved with any edit above
    it, and so did the next part's start, and so on while parts overflowed)."""
    parts: list[str] = []
    pieces, again = _pieces(text, 0, len(text), _PART_BREAKS), deque[tuple[int, int]]()  # again: a part cut back
    part: list[tuple[int, int]] = []  # the pieces of the part being cut (not all the text's: a log has millions)
    best: tuple[float, int] | None = None  # the score of the best piece to cut before, past MIN_PART_CHARS, and where
    while (piece := again.popleft() if again else next(pieces, None)) is not None:
        start = part[0][0] if part else piece[0]
        if part and piece[1] - start > PART_CHARS:
            cut = len(part) if best is None else best[1]
            parts.append(text[start:part[cut - 1][1]].strip())
            again.extendleft(reversed([*part[cut:], piece]))  # the next part's first pieces
            part, best = [], None
            continue
        if part and part[-1][1] - start >= MIN_PART_CHARS:
            if (score := _cut_score(text[piece[0]:piece[1]].strip())) < 1:
                parts.append(text[start:part[-1][1]].strip())
                part, best = [], None
            elif best is None or score < best[0]:
                best = (score, len(part))
        part.append(piece)
    return [*parts, text[part[0][0]:part[-1][1]].strip()] if part else parts


def _pieces(text: str, start: int, end: int, breaks: tuple[str, ...]) -> Iterator[tuple[int, int]]:
    """The (start, end) of each piece of `text[start:end]` with some text, in order: its paragraphs, and of one longer
    than PART_CHARS its lines, of a line its words, of a word slices of PART_CHARS."""
    if not breaks:
        yield from ((at, min(at + PART_CHARS, end)) for at in range(start, end, PART_CHARS)
                    if text[at:at + PART_CHARS].strip())
        return
    joint = breaks[0]
    while start < end:
        stop = text.find(joint, start, end)
        stop = end if stop < 0 else stop
        if stop - start > PART_CHARS:
            yield from _pieces(text, start, stop, breaks[1:])
        elif text[start:stop].strip():
            yield start, stop
        start = stop + len(joint)


def _cut_score(piece: str) -> float:
    """How near `piece` (stripped) comes to starting a part, by its text alone: 0 for a Markdown heading, else the hash
    of its ends, a fraction of 1, over its length in CUT_SPACING; below 1, a part starts there (odds of its length in
    CUT_SPACING: a part's expected length does not depend on whether the text runs in paragraphs or in lines)."""
    if _HEADING.match(piece):
        return 0.0
    ends = piece if len(piece) <= 2 * CUT_HASH_ENDS else piece[:CUT_HASH_ENDS] + piece[-CUT_HASH_ENDS:]
    return zlib.crc32(ends.encode()) / 2**32 * CUT_SPACING / len(piece)


def _file_document(file: Path) -> Iterator[Document]:
    suffix = file.suffix.lower()
    content = _decode(_whole(file), html=suffix in HTML_SUFFIXES)
    if "\x00" in content:
        return
    if suffix in HTML_SUFFIXES:
        page = html_to_markdown(content)
        if page.markdown.strip():
            yield Document(title=page.title or shown(file.stem), text=page.markdown, origin=shown(file))
    elif suffix in MARKDOWN_SUFFIXES:
        yield from _markdown_documents(content, file)
    elif content.strip():
        yield Document(title=_first_line_title(content, file), text=content.strip(), origin=shown(file))


def _whole(file: Path) -> bytes:
    """A file's bytes, if not past MAX_FILE_BYTES (a CorpusFormatError, naming it, if so)."""
    with file.open("rb") as stream:
        size = os.fstat(stream.fileno()).st_size
        data = stream.read(MAX_FILE_BYTES + 1) if size <= MAX_FILE_BYTES else b""
    if size > MAX_FILE_BYTES or len(data) > MAX_FILE_BYTES:  # (or grown past it since: a log being written)
        raise CorpusFormatError(f"{shown(file)}: {max(size, len(data)) / 2**20:,.0f} MiB, past the "
                                f"{MAX_FILE_BYTES / 2**20:,.0f} MiB a file is read whole (split it, or make it a JSONL "
                                f"file, read row by row)")
    return data


def _decode(data: bytes, html: bool = False, whole: bool = True) -> str:
    """A file's text: in the encoding its byte-order mark names (UTF-8's dropped: it broke a JSONL file's first row
    and a Markdown first-line heading; UTF-16 is Windows' "Unicode"), else, of an HTML page, the one it declares (a
    <meta> charset, an XML declaration: a mirrored site's or a mailing-list archive's Cyrillic, Shift_JIS or Latin-2
    pages were read as Windows-1252, unsearchable), else UTF-8, else, of a whole file, the encoding its bytes look
    written in, as a browser guesses a page's (a GBK or Shift_JIS Markdown file was indexed as Windows-1252
    mojibake), and of a JSONL row, too short to guess from alone, Windows-1252, what a Latin-1 file is read as
    (UTF-8's replacement characters had made its accented words unsearchable)."""
    if (marked := bom_encoding(data)) is not None:
        return data.decode(marked, errors="replace")
    if html and (declared := body_encoding(data, None)) != "utf-8":  # "utf-8" also when it declares none
        return decode_body(data, "cp1252" if declared in _WINDOWS_1252 else declared)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        # Windows-1252's five unassigned bytes as U+FFFD
        return data.decode(undeclared_encoding(data) if whole else "cp1252", errors="replace")


def _markdown_documents(content: str, file: Path) -> Iterator[Document]:
    """A Markdown file as one document. Its front matter's title names it (its first line was the title: "---"), its
    other fields stay, unfenced, above the text: an author or a date is something to find."""
    content = content.replace("\r\n", "\n")
    front = _FRONT_MATTER.match(content)
    fields, body = (front.group(1), content[front.end():].strip()) if front else ("", content.strip())
    title = ""
    if named := _TITLE_FIELD.search(fields):
        title = named.group(1).strip("\"'")
        fields = fields[:named.start()] + fields[named.end():]
    if body or fields.strip():
        text = f"{fields.strip()}\n\n{body}".strip()
        yield Document(title=title or _first_line_title(body or text, file), text=text, origin=shown(file))


def _first_line_title(content: str, file: Path) -> str:
    """A Markdown heading or the first short line names the document; else the file name does."""
    first = content.strip().splitlines()[0].strip()
    if first.startswith("#"):
        return first.lstrip("#").strip()
    return first if len(first) <= 120 else shown(file.stem)


def _jsonl_documents(file: Path) -> Iterator[Document]:
    """Row by row, split at "\\n" alone: a file of millions of rows is not held whole, and a row whose string holds
    U+2028 or U+0085 unescaped (JSON allows it; `json.dumps(ensure_ascii=False)` writes it) is not cut in two there
    as str.splitlines cut it."""
    with file.open("rb") as stream:
        wide = bom_encoding(stream.read(4)) in ("utf-16", "utf-32")
        stream.seek(0)
        lines = (_decode(stream.read()).split("\n") if wide  # UTF-16/32: wide newlines
                 else (_decode(line, whole=False) for line in stream))
        yield from _jsonl_rows(lines, file)


def _jsonl_rows(lines: Iterable[str], file: Path) -> Iterator[Document]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{shown(file)}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusFormatError(f"{where}: not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            found = f"; this one has {', '.join(map(repr, row))}" if isinstance(row, dict) else ""
            raise CorpusFormatError(f"{where}: a row must be an object with a string 'text' (and optional title, "
                                    f"url, id){found}")
        text = _LONE_SURROGATE.sub("\ufffd", row["text"])
        title = _LONE_SURROGATE.sub("\ufffd", str(row.get("title") or text[:80]))
        url = _LONE_SURROGATE.sub("\ufffd", str(row.get("url") or ""))
        place = jsonl_place(title, url, _row_id(row.get("id")))  # one of an earlier row too: writes.py numbers it
        yield Document(title=title, text=text, url=url, origin=where, place=place)


def _row_id(value: object) -> str | None:
    """A row's `id` field as its place's name: a string or an integer (JSON's), else none."""
    if isinstance(value, str) and value or isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def is_part(place: str) -> bool:
    """Whether a document's place (Document.place) is a part's number: of a file's text, not a JSONL row."""
    return place.isdigit()


def jsonl_place(title: str, url: str, row_id: str | None = None) -> str:
    """A JSONL row's place in its file (Document.place): its `id` (a title or url edited does not move it), else its
    url, else its title."""
    if row_id is not None:
        return f"id {row_id}"
    return f"url {url}" if url else f"title {title}"
