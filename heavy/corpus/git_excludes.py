"""The ignore rules git reads besides .gitignore files, read without running git: a repository's `info/exclude` and
the user's global excludes file (`core.excludesFile` of their own git config, else `$XDG_CONFIG_HOME/git/ignore`).
A folder add passed over what .gitignore files ignore but indexed what a user keeps out of git there (their editor's
backups, a scratch folder listed in info/exclude so as not to commit a .gitignore)."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

# a rules or config file past this is not read (git's cap is 100 MB, but pathspec holds a regex a line and matches
# each path against them all: a cloned repository's .gitignore must not make an add take the memory or hours it would)
MAX_RULES_BYTES = 1 << 20
_SECTION = re.compile(r'\s*\[\s*([^\]\s"]+)\s*("(?:[^"\\]|\\.)*")?\s*\]\s*(.*)', re.DOTALL)  # [name "sub"] rest
_KEY = re.compile(r"\s*([A-Za-z][A-Za-z0-9-]*)\s*(=?)(.*)", re.DOTALL)
_ESCAPES = {"n": "\n", "t": "\t", "b": "\b", "\\": "\\", '"': '"'}


def rule_lines(file: Path, follow_link: bool = False) -> list[str] | None:
    """A rules file's lines, read as git reads a .gitignore: not through a symlink (a cloned repository's .gitignore
    linked to /dev/zero filled the memory), a regular file only (a FIFO blocked the add for ever), and at most
    MAX_RULES_BYTES; None otherwise, or when it cannot be read. `follow_link`: the user's own files (a dotfiles
    manager links ~/.gitconfig), still a regular file within the cap."""
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow_link else os.O_NOFOLLOW)  # a FIFO opens without a writer
    try:
        descriptor = os.open(file, flags)
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


def owned(path: Path) -> bool:
    """Whether `path` is the user's (as git's safe.directory asks of a repository: another user's sets no rules)."""
    try:
        return os.lstat(path).st_uid == os.geteuid()
    except OSError:  # gone meanwhile
        return False


def repository_excludes(top: Path) -> list[list[str]]:
    """The lines of the global excludes file, then of info/exclude (git's order, the last one read winning), for a
    repository whose work tree's top is `top`; none when `top` holds no .git of the user's."""
    if (git_dir := _git_dir(top)) is None:
        return []
    found = [_global_excludes(top), rule_lines(git_dir / "info" / "exclude")]
    return [lines for lines in found if lines is not None]


def _git_dir(top: Path) -> Path | None:
    """The repository `top/.git` names, where its info/exclude is: the folder, or of a worktree or a submodule (a
    file "gitdir: PATH"), its common git folder."""
    dot_git = top / ".git"
    try:
        mode = os.lstat(dot_git).st_mode
    except OSError:
        return None
    if not owned(dot_git):
        return None
    if stat.S_ISDIR(mode):
        return dot_git
    lines = rule_lines(dot_git) if stat.S_ISREG(mode) else None
    if not lines or not lines[0].startswith("gitdir:"):
        return None
    git_dir = top / lines[0].removeprefix("gitdir:").strip()
    common = rule_lines(git_dir / "commondir")  # a worktree's: its repository's folder, relative to its own
    git_dir = git_dir / common[0].strip() if common else git_dir
    return git_dir if owned(git_dir) else None


def _global_excludes(top: Path) -> list[str] | None:
    """The user's excludes file: core.excludesFile of their global git config (never a repository's, which the
    folder added may have brought), else git's default; a path relative to the repository's top, where git runs."""
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"))
    named = None
    if global_config := os.environ.get("GIT_CONFIG_GLOBAL"):
        configs = [Path(global_config)]
    else:  # both, ~/.gitconfig read last
        configs = [config_home / "git" / "config", Path(os.path.expanduser("~/.gitconfig"))]
    for config in configs:
        named = _excludes_file_setting(rule_lines(config, follow_link=True) or []) or named
    if named == "":  # set empty: no file, not the default
        return None
    file = top / os.path.expanduser(named) if named else config_home / "git" / "ignore"
    return rule_lines(file, follow_link=True)


def _excludes_file_setting(lines: list[str]) -> str | None:
    """The last core.excludesFile a git config's lines set ("" for an empty value); its includes are not read."""
    found, section, at = None, "", 0
    while at < len(lines):
        line = lines[at]
        at += 1
        if header := _SECTION.fullmatch(line):
            section = "" if header.group(2) else header.group(1).lower()  # [core "x"] is not [core]
            line = header.group(3)
        key = _KEY.fullmatch(line)
        if not key or line.lstrip().startswith(("#", ";")):
            continue
        value, continued = _config_value(key.group(3))
        while continued and at < len(lines):
            more, continued = _config_value(lines[at])
            value, at = value + more, at + 1
        if section == "core" and key.group(1).lower() == "excludesfile" and key.group(2):
            found = value
    return found


def _config_value(raw: str) -> tuple[str, bool]:
    """A git config value as written on one line: quotes and escapes undone, a comment and the blanks around it
    dropped; and whether it goes on on the next line (a final backslash)."""
    value, quoted, escaped, kept = [], False, False, 0  # kept: the length up to its last character not a bare blank
    for char in raw:
        if escaped:
            value.append(_ESCAPES.get(char, char))
            escaped, kept = False, len(value)
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted, kept = not quoted, len(value)
        elif not quoted and char in "#;":
            break
        elif quoted or not char.isspace():
            value.append(char)
            kept = len(value)
        elif value:  # a blank between words stays, one before the value does not
            value.append(char)
    return "".join(value[:kept]), escaped
