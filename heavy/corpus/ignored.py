"""What `corpus add` of a folder passes over as not the user's documents but a tool's: what the folder's .gitignore
files ignore (and those of its repository above it, as git reads them), and vendored or generated folders whatever
the .gitignore says: node_modules/ (its packages' READMEs were indexed as notes), __pycache__/, a virtualenv, a
cache."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathspec import GitIgnoreSpec

VENDORED_FOLDERS = frozenset({"node_modules", "bower_components", "__pycache__"})
# a folder holding one of these files is a tool's: a virtualenv (pyvenv.cfg), a cache (CACHEDIR.TAG: cargo's target/)
TOOL_MARKERS = ("pyvenv.cfg", "CACHEDIR.TAG")
# a .gitignore past this is not read (git's cap is 100 MB, but pathspec holds a regex a line and matches each path
# against them all: a cloned repository's .gitignore must not make an add take the memory or hours it would)
MAX_RULES_BYTES = 1 << 20


def is_tool_folder(folder: Path) -> bool:
    # os.path's: Path.is_file raises on a folder it may not list, which the walk names
    return folder.name in VENDORED_FOLDERS or any(os.path.isfile(folder / marker) for marker in TOOL_MARKERS)


@dataclass(frozen=True)
class IgnoreRules:
    """The .gitignore files that apply in one folder, the outermost first, each with the folder it is in."""
    specs: tuple[tuple[Path, GitIgnoreSpec], ...] = ()

    @classmethod
    def above(cls, folder: Path) -> IgnoreRules:
        """The rules in `folder` (resolved) from its repository's .gitignore files above it; none outside one, nor
        when they ignore `folder` itself: a folder named is read, as a hidden one is (`corpus add repo/build`)."""
        for depth, ancestor in enumerate(folder.parents):
            if os.path.exists(ancestor / ".git"):
                if not _owned(ancestor / ".git"):  # as git's safe.directory: another user's /tmp/.git sets no rules
                    return cls()
                rules = cls()
                for above in reversed(folder.parents[:depth + 1]):
                    rules = rules.within(above)
                return cls() if rules.ignores(folder, is_folder=True) else rules
        return cls()

    def within(self, folder: Path) -> IgnoreRules:
        """The rules in `folder`: these, then its own .gitignore's."""
        if (lines := _rule_lines(folder / ".gitignore")) is None:  # none, or not readable: nothing ignored by it
            return self
        from pathspec import GitIgnoreSpec  # 25 ms: not for every `heavy` command, nor a folder with no .gitignore

        return IgnoreRules((*self.specs, (folder, GitIgnoreSpec.from_lines(lines))))

    def ignores(self, path: Path, is_folder: bool) -> bool:
        """Whether the .gitignore files ignore `path`: the nearest one with a pattern matching it decides, by the last
        such pattern (a "!" one keeps it)."""
        for folder, spec in reversed(self.specs):
            relative = path.relative_to(folder).as_posix() + ("/" if is_folder else "")
            if (ignored := spec.check_file(relative).include) is not None:
                return ignored
        return False


def _owned(path: Path) -> bool:
    try:
        return os.lstat(path).st_uid == os.geteuid()
    except OSError:  # gone meanwhile
        return False


def _rule_lines(file: Path) -> list[str] | None:
    """A .gitignore's lines, read as git reads one: not through a symlink (a cloned repository's .gitignore linked to
    /dev/zero filled the memory), a regular file only (a FIFO blocked the add for ever), and at most MAX_RULES_BYTES;
    None otherwise, or when it cannot be read."""
    try:
        descriptor = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # a FIFO opens without a writer
    except OSError:
        return None
    with os.fdopen(descriptor, "rb") as opened:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            return None
        try:
            data = opened.read(MAX_RULES_BYTES + 1)
        except OSError:
            return None
    return None if len(data) > MAX_RULES_BYTES else data.decode(errors="replace").splitlines()
