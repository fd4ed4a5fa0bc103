"""The shell that sets up the python sandbox's namespaces (python_sandbox's "namespaces" and "user-namespaces"
isolations): private temp dirs, home, data dirs and secrets hidden, and a read-only root of the code's own that
holds only what Python needs, so a kernel without Landlock still shows it no other host file.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from heavy.tools.sandbox_runner import READABLE_SYSTEM_PATHS

if TYPE_CHECKING:
    from heavy.tools.python_sandbox import SandboxLimits

NAMESPACE_SCRATCH = "/tmp/work"  # inside the sandbox's private /tmp
PRIVATE_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
PARKING_DIR = "/mnt"  # covered by a private tmpfs inside the namespace only
NEW_ROOT = PARKING_DIR  # once parking is done, the code's root: a tmpfs holding only what Python needs
SECRET_DIRS = ("/run/secrets",)  # hidden when present: Kubernetes mounts its service-account token there
UNSHARE = ("unshare", "--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc", "--")
UNSHARE_USER = ("unshare", "--user", "--map-root-user", *UNSHARE[1:])


def namespace_script(argv: list[str], limits: SandboxLimits, uid: int | None, hidden: list[str],
                     keep: list[str], root: list[str]) -> str:
    """Shell run as root inside the new namespaces: private temp dirs, `hidden` dirs covered, a new root holding
    only the `root` paths, then argv run in it as `uid` (namespaces), or (uid None: user-namespaces) every mount
    made read-only first and argv run as the namespace's root with no capabilities left."""
    q = shlex.quote
    tmpfs = f"mount -t tmpfs -o size={limits.tmpfs_bytes},nosuid,nodev"
    lines = ["set -eu"]
    if uid is None:  # our own files stay ours outside: nothing mounted from outside may be written
        # mountinfo escapes a space in a path as \040: printf %b turns it back
        lines.append("for m in $(awk '{print $5}' /proc/self/mountinfo | sort -u); do "
                     "mount -o remount,bind,ro \"$(printf '%b' \"$m\")\"; done")
    if keep:  # park what must stay visible (the interpreter, a venv under /tmp) before covering its parents
        lines += [f"mkdir -p {PARKING_DIR}", f"{tmpfs},mode=700 tmpfs {PARKING_DIR}"]
        for i, path in enumerate(keep):
            lines += [f"mkdir {PARKING_DIR}/{i}", f"mount --bind {q(path)} {PARKING_DIR}/{i}"]
    lines += [f"if [ -d {d} ]; then {tmpfs},mode=1777 tmpfs {d}; fi" for d in PRIVATE_TMP_DIRS]
    lines += [f"{tmpfs},mode=755 tmpfs {q(path)}" for path in hidden]
    for i, path in enumerate(keep):
        # -n: with every mount read-only (user-namespaces), recording the move in /run/mount fails the command
        lines += [f"mkdir -p {q(path)}", f"mount -n --move {PARKING_DIR}/{i} {q(path)}",
                  f"mount -o remount,bind,ro {q(path)}"]
    if keep:
        lines.append(f"umount {PARKING_DIR}")
    lines += [f"mkdir {NAMESPACE_SCRATCH}", f"mkdir -p {NEW_ROOT}", f"{tmpfs},mode=755 tmpfs {NEW_ROOT}"]
    lines += new_root_lines(root)
    lines.append(f"mount -o remount,bind,ro {NEW_ROOT}")
    # The rest runs in the new root: without Landlock (Linux < 5.13) the code read /etc/passwd and any file its uid
    # may read. No capability is left to leave it (chroot needs one). No exec: unshare cannot pass a child's death
    # signal on, but the shell's 128+N exit status can.
    enter = f"unshare --root={NEW_ROOT} --wd={NAMESPACE_SCRATCH} {setpriv_path()}"
    if uid is None:
        lines.append(f"{enter} --bounding-set=-all --inh-caps=-all --no-new-privs -- {shlex.join(argv)}")
    else:
        lines += [f"chown {uid}:{uid} {NAMESPACE_SCRATCH}",
                  f"{enter} --reuid={uid} --regid={uid} --clear-groups --no-new-privs -- {shlex.join(argv)}"]
    return "\n".join(lines)


def root_paths(prefixes: Sequence[str]) -> list[str]:
    """What the code's root holds: the interpreter's prefixes, what the runner's Landlock lets it read besides
    (shared libraries, zoneinfo, devices), the sandbox's own /proc and private /tmp (the scratch dir), and setpriv,
    which starts it there."""
    system = (p for p in READABLE_SYSTEM_PATHS if not p.startswith("/proc/"))
    return sorted({*prefixes, *system, "/proc", "/tmp", setpriv_path(), os.path.realpath(sys.executable)})


def setpriv_path() -> str:
    return os.path.realpath(shutil.which("setpriv") or "/usr/bin/setpriv")


def new_root_lines(paths: Sequence[str]) -> list[str]:
    """Shell making each of `paths` appear at its place under NEW_ROOT: a symlink as the same link (/lib ->
    usr/lib), a dir or file bound read-only, /proc and /tmp as they are with what is mounted in them (a
    container's masks of /proc; a venv under /tmp, kept read-only). A path inside a dir already bound is there
    with it. Few commands: each is a process to start."""
    q = shlex.quote
    present = [p for p in paths if os.path.lexists(p)]
    bound = [p for p in present if not os.path.islink(p)
             and not any(_inside(p, d) for d in present if os.path.isdir(d) and not os.path.islink(d))]
    links = [p for p in present if os.path.islink(p)]
    dirs = sorted(({os.path.dirname(p) for p in (*bound, *links)} | {p for p in bound if os.path.isdir(p)}) - {"/"})
    files = [p for p in bound if not os.path.isdir(p)]
    lines = [f"mkdir -p {' '.join(q(NEW_ROOT + d) for d in dirs)}"]
    if files:
        lines.append(f"touch {' '.join(q(NEW_ROOT + f) for f in files)}")
    lines += [f"ln -s {q(os.readlink(link))} {q(NEW_ROOT + link)}" for link in links]
    for path in bound:
        bind = "--rbind" if path in ("/proc", "/tmp") else "--bind -o ro"
        lines.append(f"mount {bind} {q(path)} {q(NEW_ROOT + path)}")
    return lines


def namespace_command(argv: list[str], limits: SandboxLimits, uid: int | None,
                      data_dirs: Sequence[str] = ()) -> list[str]:
    """`argv` wrapped to run as `uid` in fresh namespaces (None: in a user namespace of its own, see
    namespace_script), with our home, `data_dirs`, mounted secrets and temp dirs hidden but the interpreter and its
    environment (pyenv under home, a venv under /tmp) kept, read-only."""
    if _home_directory().rstrip("/") == "":
        raise RuntimeError("refusing to hide the home directory '/'")
    if any(os.path.realpath(d) == "/" for d in data_dirs):
        raise RuntimeError("refusing to hide the data directory '/'")
    hidden = hidden_dirs(data_dirs)
    prefixes = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix)}
    keep = sorted(p for p in prefixes if any(_inside(p, d) for d in (*hidden, *_private_tmp())))
    unshare = UNSHARE if uid is not None else UNSHARE_USER
    return [*unshare, "sh", "-c", namespace_script(argv, limits, uid, hidden, keep, root_paths(sorted(prefixes)))]


def hidden_dirs(data_dirs: Sequence[str]) -> list[str]:
    """Our home, `data_dirs` and mounted secrets, outermost first, none inside the private temp dirs (hidden with
    them) and never '/'."""
    candidates = [_home_directory(), *(d for d in (*data_dirs, *SECRET_DIRS) if os.path.isdir(d))]
    return _outermost([real for real in map(os.path.realpath, candidates) if real != "/"], _private_tmp())


def _private_tmp() -> list[str]:
    """The shared temp dirs, as the paths they resolve to."""
    return [os.path.realpath(d) for d in PRIVATE_TMP_DIRS]


def _inside(path: str, other: str) -> bool:
    return path != other and path.startswith(other.rstrip("/") + "/")


def _outermost(paths: list[str], covered: Sequence[str]) -> list[str]:
    """`paths` without those inside another one or inside a `covered` dir (the private temp dirs): a tmpfs over
    a parent removes the child's mount point, and mounting on it would fail (the default HEAVY_HOME is under home;
    one under /tmp is hidden with /tmp)."""
    unique = list(dict.fromkeys(paths))
    return [p for p in unique if not any(_inside(p, other) for other in (*unique, *covered))]


def _home_directory() -> str:
    """The directory that really holds our files: the account's (not $HOME), or $HOME for a uid no account names
    (containers run as an arbitrary uid)."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_dir
    except KeyError:
        return os.environ.get("HOME", "/")
