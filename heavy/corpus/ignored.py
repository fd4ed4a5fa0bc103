"""What `corpus add` of a folder passes over as not the user's documents but a tool's: what the folder's .gitignore
files ignore (and those of its repository above it, its info/exclude and the user's global excludes, as git reads
them: git_excludes.py), and vendored or generated folders whatever
the .gitignore says: node_modules/ (its packages' READMEs were indexed as notes), __pycache__/, a virtualenv, a
cache."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from heavy.corpus.git_excludes import owned, repository_excludes, rule_lines

if TYPE_CHECKING:
    from pathspec import GitIgnoreSpec

VENDORED_FOLDERS = frozenset({"node_modules", "bower_components", "__pycache__"})
# a folder holding one of these files is a tool's: a virtualenv (pyvenv.cfg), a cache (CACHEDIR.TAG: cargo's target/)
TOOL_MARKERS = ("pyvenv.cfg", "CACHEDIR.TAG")


def is_tool_folder(folder: Path) -> bool:
    # os.path's: Path.is_file raises on a folder it may not list, which the walk names
    return folder.name in VENDORED_FOLDERS or any(os.path.isfile(folder / marker) for marker in TOOL_MARKERS)


@dataclass(frozen=True)
class IgnoreRules:
    """The rules files that apply in one folder, the outermost (and, in one folder, the weakest) first, each with the
    folder its patterns are relative to."""
    specs: tuple[tuple[Path, GitIgnoreSpec], ...] = ()

    @classmethod
    def above(cls, folder: Path) -> IgnoreRules:
        """The rules in `folder` (resolved) from its repository's .gitignore files above it; none outside one, nor
        when they ignore `folder` itself: a folder named is read, as a hidden one is (`corpus add repo/build`)."""
        for depth, ancestor in enumerate(folder.parents):
            if os.path.exists(ancestor / ".git"):
                if not owned(ancestor / ".git"):  # as git's safe.directory: another user's /tmp/.git sets no rules
                    return cls()
                rules = cls()
                for above in reversed(folder.parents[:depth + 1]):
                    rules = rules.within(above)
                return cls() if rules.ignores(folder, is_folder=True) else rules
        return cls()

    def within(self, folder: Path) -> IgnoreRules:
        """The rules in `folder`: these, then, at a repository's top, git's excludes for it (the user's global file,
        then its info/exclude: below every .gitignore, as in git), then its own .gitignore's."""
        # a .gitignore that is none, or not readable, ignores nothing
        found = [*repository_excludes(folder), *filter(None, [rule_lines(folder / ".gitignore")])]
        if not found:
            return self
        from pathspec import GitIgnoreSpec  # 25 ms: not for every `heavy` command, nor a folder with no .gitignore

        return IgnoreRules((*self.specs, *((folder, GitIgnoreSpec.from_lines(lines)) for lines in found)))

    def ignores(self, path: Path, is_folder: bool) -> bool:
        """Whether the .gitignore files ignore `path`: the nearest one with a pattern matching it decides, by the last
        such pattern (a "!" one keeps it)."""
        for folder, spec in reversed(self.specs):
            relative = path.relative_to(folder).as_posix() + ("/" if is_folder else "")
            if (ignored := spec.check_file(relative).include) is not None:
                return ignored
        return False
