"""`heavy corpus add` of a folder passes over what its .gitignore files ignore and vendored or generated folders."""

import os
import threading

import pytest
from typer.testing import CliRunner

from heavy.corpus.commands import corpus_add, corpus_app
from heavy.corpus.documents import CorpusFormatError, find_files
from heavy.corpus.git_excludes import MAX_RULES_BYTES
from heavy.corpus.index import CorpusIndex

NOTE = "# {}\n\nThe cryostat held 4 K."
NOBODY = 65534


def write(root, files):
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_what_a_folders_gitignore_ignores_and_vendored_folders_are_passed_over_and_named_unless_asked_for(tmp_path):
    # a checkout's node_modules/ READMEs, a virtualenv's packages' docs, Sphinx's _build/ copies of every page and the
    # drafts a .gitignore keeps out of the repository were indexed as the user's notes
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    write(repo, {".gitignore": "secret/\n"})  # the repository's, above the folder added: git applies it there too
    root, index = repo / "lab", tmp_path / "index.sqlite"
    write(root, {
        "cryostat.md": NOTE.format("Cryostat"),
        "notes/run.md": NOTE.format("Run"),
        "notes/keep.tmp.md": NOTE.format("Kept"),  # a "!" pattern keeps it
        ".gitignore": "_build/\n*.tmp.md\n!keep.tmp.md\n",
        "docs/_build/html/index.html": "<title>Built</title><p>The cryostat held 4 K.</p>",
        "notes/.gitignore": "drafts/\nscratch.md\n",  # a nested one, for its folder
        "notes/drafts/idea.md": NOTE.format("Idea"), "notes/scratch.md": NOTE.format("Scratch"),
        "notes/a.tmp.md": NOTE.format("Temporary"),
        "node_modules/left-pad/README.md": NOTE.format("left-pad"),
        "notes/__pycache__/run.cpython-311.pyc": "\x00",
        "env/pyvenv.cfg": "home = /usr/bin", "env/lib/site-packages/pkg/README.md": NOTE.format("pkg"),
        "secret/passwords.md": NOTE.format("Passwords"),
    })
    result = CliRunner().invoke(corpus_app, ["add", str(root), "--index", str(index)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("indexed 3 new documents from 3 files")
    assert result.stderr == ("not indexed, ignored (.gitignore, vendored or generated): docs/_build/ (1 file), env/ "
                             "(1 file), node_modules/ (1 file), notes/a.tmp.md (1 file), notes/drafts/ (1 file) and 2 "
                             "more (--include-ignored indexes them)\n")
    assert sorted(hit.title for hit in CorpusIndex(index).search("cryostat", k=10)) == ["Cryostat", "Kept", "Run"]
    assert corpus_add(root, index, include_ignored=True).added == 7
    assert corpus_add(root, index).removed == 7  # as were they deleted: no longer what the folder's add indexes
    # a folder named is read, whatever the rules above it say, as a hidden one is
    assert corpus_add(root / "secret", tmp_path / "named.sqlite").added == 1
    assert corpus_add(root / "node_modules", tmp_path / "named.sqlite").added == 1
    write(root, {"vendor/node_modules/pkg/README.md": NOTE.format("pkg"), "vendor/b.tmp.md": NOTE.format("b")})
    with pytest.raises(CorpusFormatError, match="2 ignored, which --include-ignored indexes"):
        corpus_add(root / "vendor", tmp_path / "other.sqlite")


def test_a_gitignore_is_read_as_git_reads_one_not_through_a_link_nor_past_its_size_cap(tmp_path):
    # a cloned repository's .gitignore linked to /dev/zero filled the memory of the add reading it; git 2.32+ opens
    # .gitignore files without following links, and reads none past a size cap
    root, index = tmp_path / "notes", tmp_path / "index.sqlite"
    (tmp_path / "elsewhere.txt").write_text("*.md\n")
    write(root, {"a/run.md": NOTE.format("Run"), "b/cryostat.md": NOTE.format("Cryostat"),
                 "b/.gitignore": "*.md\n" + "#" * MAX_RULES_BYTES})
    (root / "a" / ".gitignore").symlink_to(tmp_path / "elsewhere.txt")  # as /dev/zero, without its danger
    assert corpus_add(root, index).added == 2


def test_a_gitignore_that_is_a_fifo_is_passed_over_not_waited_on(tmp_path):
    # open() of a FIFO waits for a writer, and a read for its writers to close: the add hung for ever
    root, index = tmp_path / "notes", tmp_path / "index.sqlite"
    write(root, {"run.md": NOTE.format("Run")})
    os.mkfifo(root / ".gitignore")
    writer = os.open(root / ".gitignore", os.O_RDWR)  # so that an add that reads it reads this pattern
    os.write(writer, b"*.md\n")
    outcome = {}
    add = threading.Thread(target=lambda: outcome.update(added=corpus_add(root, index).added), daemon=True)
    add.start()
    add.join(timeout=60)  # not a measure: an add reading the FIFO waits until the writer below closes
    os.close(writer)
    add.join()
    assert outcome == {"added": 1}


@pytest.mark.skipif(os.geteuid() != 0, reason="gives a folder to another user")
def test_another_users_repository_above_the_folder_sets_no_rules(tmp_path):
    # anyone may create /tmp/.git and /tmp/.gitignore: a user's `corpus add /tmp/notes` then passed over (and
    # forgot) whatever they listed; git refuses such a repository (safe.directory), and its rules do not apply here
    shared = tmp_path / "shared"
    (shared / ".git").mkdir(parents=True)
    write(shared, {".gitignore": "*.md\n", "notes/run.md": NOTE.format("Run")})
    os.chown(shared / ".git", NOBODY, NOBODY)
    assert corpus_add(shared / "notes", tmp_path / "index.sqlite").added == 1
    os.chown(shared / ".git", os.geteuid(), os.getegid())  # the user's own repository: its rules apply
    with pytest.raises(CorpusFormatError, match="1 ignored"):
        corpus_add(shared / "notes", tmp_path / "other.sqlite")


def git_repository(top, worktree_of=None):
    """A repository's top, its .git a folder, or a file naming the git folder of a worktree of `worktree_of`."""
    top.mkdir(parents=True)
    if worktree_of is None:
        (top / ".git" / "info").mkdir(parents=True)
        return
    own = worktree_of / ".git" / "worktrees" / top.name
    own.mkdir(parents=True)
    (own / "commondir").write_text("../..\n")
    (top / ".git").write_text(f"gitdir: {os.path.relpath(own, top)}\n")


def user_home(tmp_path, monkeypatch):
    """A home of the test's own, whose git config and excludes file are the ones git reads (none yet)."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("GIT_CONFIG_GLOBAL", raising=False)
    return home


def found(root):
    listed = find_files(root)
    return sorted(str(file.relative_to(root)) for file in listed.files), [name for name, _ in listed.ignored]


def test_a_repositorys_info_exclude_and_the_users_global_excludes_are_read_as_git_reads_them(tmp_path, monkeypatch):
    # what a user keeps out of git without a .gitignore (info/exclude, their global excludes file: editor backups)
    # was indexed; git reads both below the .gitignore files, the global one from the user's own config only
    home, repo = user_home(tmp_path, monkeypatch), tmp_path / "repo"
    git_repository(repo)
    files = {"run.md": NOTE.format("Run"), "scratch/idea.md": NOTE.format("Idea"), "old.bak.md": NOTE.format("Old"),
             "keep.bak.md": NOTE.format("Kept"), ".gitignore": "!keep.bak.md\n"}  # a .gitignore outranks both
    write(repo, files)
    write(home, {".config/git/ignore": "*.bak.md\n"})  # git's default global excludes file
    write(repo / ".git", {"info/exclude": "scratch/\n"})
    assert found(repo) == (["keep.bak.md", "run.md"], ["old.bak.md", "scratch/"])
    assert found(repo / "scratch") == (["idea.md"], [])  # a folder named is read, as under a .gitignore
    # core.excludesFile, in ~/.gitconfig after the XDG config (the last one wins), quoted, with a comment
    write(home, {".config/git/config": "[core]\n\texcludesFile = ~/elsewhere\n",
                 ".gitconfig": '[user]\n\tname = A\n[core "x"]\n\texcludesfile = ~/no\n'
                               '[core]\n\texcludesFile = "~/my ignore" ; the global one\n',
                 "my ignore": "run.md\n"})
    assert found(repo) == (["keep.bak.md", "old.bak.md"], ["run.md", "scratch/"])
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / "none"))  # git reads only that one: the default again
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    write(tmp_path / "xdg", {"git/ignore": "old.bak.md\n"})
    assert found(repo) == (["keep.bak.md", "run.md"], ["old.bak.md", "scratch/"])
    # a worktree's (or a submodule's) .git is a file naming its git folder; info/exclude is its repository's
    git_repository(tmp_path / "wt", worktree_of=repo)
    write(tmp_path / "wt", {name: text for name, text in files.items() if name != ".gitignore"})
    assert found(tmp_path / "wt") == (["keep.bak.md", "run.md"], ["old.bak.md", "scratch/"])
    # outside a repository git reads neither
    write(tmp_path / "plain", files)
    assert found(tmp_path / "plain")[1] == []


def test_an_info_exclude_is_not_read_through_a_link_and_the_users_own_files_are(tmp_path, monkeypatch):
    # a folder added may bring its own .git: its info/exclude is read as its .gitignore files are (not through a
    # link, which could name /dev/zero); the user's global file is theirs, often linked by a dotfiles manager
    home, repo = user_home(tmp_path, monkeypatch), tmp_path / "repo"
    git_repository(repo)
    write(repo, {"run.md": NOTE.format("Run"), "old.bak.md": NOTE.format("Old")})
    write(tmp_path / "dotfiles", {"gitignore": "*.bak.md\n", "exclude": "run.md\n"})
    (repo / ".git" / "info" / "exclude").symlink_to(tmp_path / "dotfiles" / "exclude")
    (home / ".config" / "git").mkdir(parents=True)
    (home / ".config" / "git" / "ignore").symlink_to(tmp_path / "dotfiles" / "gitignore")
    assert found(repo) == (["run.md"], ["old.bak.md"])
    (home / ".config" / "git" / "ignore").unlink()
    os.mkfifo(home / ".config" / "git" / "ignore")  # a FIFO is not waited on
    assert found(repo) == (["old.bak.md", "run.md"], [])
