"""Run untrusted Python in a separate, limited process.

Isolation "namespaces" (root with util-linux `unshare` and `setpriv`, checked once): new network namespace (no
interfaces but a down loopback), PID namespace (the whole tree dies with it, and /proc shows only it), mount
namespace with private tmpfs over /tmp, /var/tmp, /dev/shm, /run/lock and over the home directory (the
interpreter's prefix re-exposed read-only), the data dir (HEAVY_HOME: the embedded Redis's files, every tenant's
jobs) and mounted secrets (/run/secrets: Kubernetes' service-account token), and the code runs as an
unprivileged uid of its own, so rlimits (RLIMIT_NPROC included) bind.
Isolation "user-namespaces" (not root, where the kernel lets any user create a user namespace): the same network,
PID and mount namespaces entered as the user namespace's root; every mount is made read-only before the private
tmpfs go on (the code still runs as our uid outside, so our own files must not be writable), and the code runs
with no capabilities at all (it cannot unmount what hides the home directory).
Isolation "process" (fallback): the same runner and rlimits as the current user; the runner's own kernel fences
and its audit hook (which also refuses reading other processes' /proc files) are all there is; this process is made
non-dumpable so the code, running as the same user, cannot read our environment (secrets) or memory through /proc
(where the kernel has no Landlock). Weaker, and reported as such in every result.
All: a clean environment, a wall-clock timeout that kills the process group, capped output, and the runner's
fences (sandbox_runner.confine: no sockets, no new processes or programs; with Landlock, reads only of what Python
needs, writes only in the scratch dir, no signals out). The namespace modes also run the code in a read-only root
of its own holding only what Python needs (sandbox_mounts), so without Landlock it still sees no other host file;
process mode without Landlock reads what our user may read.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from heavy.config import Settings, get_settings
from heavy.tools.sandbox_mounts import NAMESPACE_SCRATCH, UNSHARE, UNSHARE_USER, namespace_command

logger = logging.getLogger(__name__)

# Ids no account uses; each concurrent run gets its own, so RLIMIT_NPROC budgets are not shared between runs.
SANDBOX_UIDS = range(200_000, 200_000 + 1024)
SHELL_SIGNAL_BASE = 128  # sh reports a child killed by signal N as exit status 128 + N
ISOLATIONS = ("auto", "namespaces", "user-namespaces", "process")
PR_SET_DUMPABLE = 4
# Process isolation's scratch dir lies on the host's /tmp, which has no quota: the code's files there are measured
# this often, and the run is killed once they take more than the limits' tmpfs_bytes (it may write past that for
# one interval at disk speed) or are more than SCRATCH_MAX_ENTRIES (each costs an inode, and time to measure).
SCRATCH_POLL_S = 0.05
SCRATCH_MAX_ENTRIES = 10_000
OWNER_RWX = 0o700
RUNNER_SOURCE = (Path(__file__).with_name("sandbox_runner.py")).read_text()
CLEAN_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8",
    # Thread pools count against RLIMIT_NPROC and the CPU is shared: one thread per numeric library.
    "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
}


@dataclass(frozen=True)
class SandboxLimits:
    wall_s: float = 20.0
    cpu_s: int = 10
    memory_bytes: int = 1 << 30  # address space; the interpreter alone takes ~30 MB
    processes: int = 16  # RLIMIT_NPROC: processes and threads of the sandbox user
    file_bytes: int = 16 << 20  # largest file the code may write
    open_files: int = 64
    output_bytes: int = 64_000  # kept of stdout+stderr; the rest is counted and dropped
    tmpfs_bytes: int = 64 << 20  # size of each private tmpfs (namespaces); of the scratch dir (process isolation)

    def __post_init__(self) -> None:
        bad = {name: value for name, value in asdict(self).items() if value <= 0}
        if bad:
            raise ValueError(f"sandbox limits must be > 0, got {bad}")

    @classmethod
    def from_settings(cls, settings: Settings) -> SandboxLimits:
        """The deployment's HEAVY_PYTHON_* limits (the file size and open files stay at their defaults)."""
        return cls(wall_s=settings.python_wall_s, cpu_s=settings.python_cpu_s,
                   memory_bytes=settings.python_memory_bytes, processes=settings.python_processes,
                   output_bytes=settings.python_output_bytes, tmpfs_bytes=settings.python_scratch_bytes)

    def rlimits(self) -> dict[str, int]:
        names = ("cpu_s", "memory_bytes", "processes", "file_bytes", "open_files")
        return {name: int(getattr(self, name)) for name in names}


@dataclass(frozen=True)
class SandboxOutcome:
    output: str
    exit_code: int | None  # None when killed for the wall-clock limit
    signal_name: str | None  # the signal that ended the process, if any
    timed_out: bool
    truncated: bool
    output_bytes: int  # total produced, kept or not
    isolation: str  # "namespaces", "user-namespaces" or "process"
    scratch_full: bool = False  # killed: its files outgrew the scratch dir's limit (process isolation)


@functools.cache
def namespaces_available() -> bool:
    """Root, util-linux unshare/setpriv present, and the kernel lets us create the namespaces."""
    return os.geteuid() == 0 and _unshare_works(UNSHARE)


@functools.cache
def user_namespaces_available() -> bool:
    """util-linux unshare/setpriv present, and the kernel (and seccomp) lets this user create a user namespace
    with the others inside it."""
    return _unshare_works(UNSHARE_USER)


def _unshare_works(unshare: tuple[str, ...]) -> bool:
    if not (shutil.which("unshare") and shutil.which("setpriv")):
        return False
    probe = subprocess.run([*unshare, "unshare", "--root=/", "--wd=/", "true"], capture_output=True, timeout=10)
    return probe.returncode == 0


def make_undumpable() -> None:
    """Code running as our user may read /proc/<our pid>/environ and /mem unless we are not dumpable (then those
    files belong to root). Children are dumpable again after exec, so this covers this process only."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def runner_argv(scratch: str, limits: SandboxLimits) -> list[str]:
    return [sys.executable, "-I", "-c", RUNNER_SOURCE, scratch, json.dumps(limits.rlimits())]


class UidPool:
    """Hands out distinct sandbox uids to concurrent runs (random order, so two worker processes rarely meet)."""

    def __init__(self, uids: range = SANDBOX_UIDS) -> None:
        self._free = random.sample(list(uids), len(uids))
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def lease(self) -> Iterator[int]:
        with self._lock:
            if not self._free:
                raise RuntimeError(f"more than {len(SANDBOX_UIDS)} python sandboxes at once")
            uid = self._free.pop()
        try:
            yield uid
        finally:
            with self._lock:
                self._free.append(uid)


UIDS = UidPool()


class PythonSandbox:
    def __init__(self, limits: SandboxLimits | None = None, isolation: str = "auto",
                 data_dirs: Sequence[str] | None = None) -> None:
        """`isolation`: "auto" takes the strongest that works here (namespaces as root, else user-namespaces, else
        process); naming one that does not work here is an error. `data_dirs` are hidden from the code like the home
        directory (default HEAVY_HOME: outside home, as in the image, its Redis files are readable to any uid).
        `limits` default to the HEAVY_PYTHON_* settings."""
        if isolation not in ISOLATIONS:
            raise ValueError(f"isolation must be one of {', '.join(ISOLATIONS)}, got {isolation!r}")
        if isolation == "namespaces" and not namespaces_available():
            raise RuntimeError("namespace isolation needs root and util-linux unshare/setpriv that work here")
        if isolation == "user-namespaces" and not user_namespaces_available():
            raise RuntimeError("user-namespace isolation needs util-linux unshare/setpriv and a kernel (and seccomp "
                               "profile) that let this user create user namespaces")
        self.limits = limits or SandboxLimits.from_settings(get_settings())
        self.data_dirs = tuple(data_dirs if data_dirs is not None else (os.path.expanduser(get_settings().home),))
        if isolation == "auto":
            isolation = ("namespaces" if namespaces_available()
                         else "user-namespaces" if user_namespaces_available() else "process")
        self.isolation = isolation
        if isolation == "process":
            make_undumpable()
            logger.warning("python sandbox: no namespaces here; only rlimits, seccomp, Landlock (if the kernel has it) "
                           "and an audit hook isolate the code")
        else:
            logger.info("python sandbox: %s isolation", isolation)

    async def run(self, code: str) -> SandboxOutcome:
        if self.isolation == "namespaces":
            with UIDS.lease() as uid:
                command = namespace_command(runner_argv(NAMESPACE_SCRATCH, self.limits), self.limits, uid,
                                            self.data_dirs)
                return await self._run(code, command, None)
        if self.isolation == "user-namespaces":
            command = namespace_command(runner_argv(NAMESPACE_SCRATCH, self.limits), self.limits, None,
                                        self.data_dirs)
            return await self._run(code, command, None)
        scratch = tempfile.mkdtemp(prefix="heavy-python-")
        try:
            return await self._run(code, runner_argv(scratch, self.limits), scratch)
        finally:
            await asyncio.to_thread(remove_scratch, scratch)

    async def _run(self, code: str, command: list[str], scratch: str | None) -> SandboxOutcome:
        process = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, cwd=scratch or "/", env=_environment(scratch or NAMESPACE_SCRATCH),
            start_new_session=True,  # its own process group, killed as a whole
        )
        reader = asyncio.create_task(self._read_capped(process.stdout))
        watcher = asyncio.create_task(self._watch_scratch(scratch, process.pid)) if scratch else None
        timed_out = False
        try:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                process.stdin.write(code.encode())
                await process.stdin.drain()
                process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), self.limits.wall_s)
            except TimeoutError:
                timed_out = True
        finally:
            scratch_full = watcher is not None and watcher.done() and watcher.result()  # done: it killed the code
            if watcher is not None:
                watcher.cancel()
            _kill_group(process.pid)  # also reaps children left behind by a finished program
            await process.wait()
        kept, total = await reader
        returncode = process.returncode
        killed_by = self._death_signal(returncode) if not timed_out else None
        return SandboxOutcome(
            output=kept.decode("utf-8", errors="replace"), exit_code=None if timed_out else returncode,
            signal_name=signal.Signals(killed_by).name if killed_by else None,
            timed_out=timed_out, truncated=total > len(kept), output_bytes=total, isolation=self.isolation,
            scratch_full=scratch_full,
        )

    async def _watch_scratch(self, scratch: str, pid: int) -> bool:
        """Kill the process group once its scratch dir holds more than the limits allow; True when it did."""
        while True:
            await asyncio.sleep(SCRATCH_POLL_S)
            used, entries = await asyncio.to_thread(scratch_usage, scratch, SCRATCH_MAX_ENTRIES)
            if used > self.limits.tmpfs_bytes or entries > SCRATCH_MAX_ENTRIES:
                _kill_group(pid)
                return True

    def _death_signal(self, returncode: int) -> int | None:
        if returncode < 0:
            return -returncode
        if self.isolation != "process" and returncode > SHELL_SIGNAL_BASE:
            return returncode - SHELL_SIGNAL_BASE
        return None

    async def _read_capped(self, stream: asyncio.StreamReader) -> tuple[bytes, int]:
        kept, total = bytearray(), 0
        while chunk := await stream.read(1 << 16):
            total += len(chunk)
            kept += chunk[: max(0, self.limits.output_bytes - len(kept))]
        return bytes(kept), total


def scratch_usage(root: str, max_entries: float) -> tuple[int, int]:
    """Bytes on disk and entries under `root`, counted until past `max_entries`. A dir the code took its owner's
    rights from (chmod 0: allowed inside its scratch dir) gets them back: it runs as our user."""
    used, entries, inodes, pending = 0, 0, set(), [root]
    while pending and entries <= max_entries:
        directory = pending.pop()
        with contextlib.suppress(OSError):
            if os.lstat(directory).st_mode & OWNER_RWX != OWNER_RWX:
                os.chmod(directory, OWNER_RWX)
            with os.scandir(directory) as listing:
                for entry in listing:
                    entries += 1
                    if entries > max_entries:
                        break
                    stat = entry.stat(follow_symlinks=False)
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
                    if stat.st_ino not in inodes:  # a hard link takes no more room
                        inodes.add(stat.st_ino)
                        used += stat.st_blocks * 512  # st_blocks counts 512-byte units: a sparse file's holes are free
    return used, entries


def remove_scratch(root: str) -> None:
    """Delete a process isolation scratch dir, dirs the code made unreadable or unwritable included."""
    scratch_usage(root, max_entries=float("inf"))
    shutil.rmtree(root, ignore_errors=True)


def _environment(work_dir: str) -> dict[str, str]:
    """Nothing of ours (API keys, tokens) is inherited; temp files and HOME point into the scratch dir."""
    return {**CLEAN_ENV, "HOME": work_dir, "TMPDIR": work_dir}


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
