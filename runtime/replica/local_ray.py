"""A private single-node Ray instance (`heavy up`, `python -m runtime serve` without RAY_ADDRESS) that listens only
on loopback, with its auth token readable by its owner alone.

Ray 2.60's `ray.init(_node_ip_address="127.0.0.1")` maps a loopback address back to the host's own address
(`services.resolve_ip_for_localhost`), so GCS, the raylet, every worker's gRPC server, the runtime-env agent and the
autoscaler monitor listened on all interfaces or on the host's address. Ray keeps loopback where its local-only mode
is on (its default on macOS and Windows: `ray_constants.ENABLE_RAY_CLUSTER`, read from
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when ray is imported). That flag only picks the node's address in the driver,
before the node starts (every process of the node is then passed `--node-ip-address=127.0.0.1`, and Ray's own
servers bind to the node's address, or to loopback when that is loopback), so it is turned off for `ray.init` alone.

Its sessions (logs, unix sockets, spilled objects) go into a folder only its owner may enter, not /tmp/ray: Ray makes
every folder it creates 0777 (its logs readable by every local user), which a 0700 parent closes.
"""

import contextlib
import os
import secrets
import stat
import sys
import tempfile
from pathlib import Path

import ray
from ray._private import ray_constants

from runtime.distributed.group import LOOPBACK
from runtime.paths import heavy_home

TOKEN_ENV_VARS = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")  # a token named elsewhere: Ray reads no file of ours
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
TOKEN_BYTES = 32  # as Ray's own generator: 256 bits, hex
SOCKET_PATH_MAX = 103 if sys.platform == "darwin" else 107  # bytes of an AF_UNIX path (Ray refuses longer ones)
# the longest a Ray session adds under its temp dir to a socket's path (pid up to 7 digits, a taken name's suffix)
SESSION_SOCKET_SUFFIX = len("/session_2026-12-07_21-58-59_123456_4194304/sockets/plasma_store.99")


def default_token_path() -> Path:
    """Where Ray reads (and, finding none, writes) its auth token."""
    return Path.home() / ".ray" / "auth_token"


def keep_token_private(path: Path | None = None) -> None:
    """Ray 2.60 writes ~/.ray/auth_token with the umask's mode (0644 usually): readable by every local user where the
    home directory is. Write it ourselves first, 0600 in a 0700 folder, or take group/other bits off one Ray wrote."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled" or any(os.environ.get(v) for v in TOKEN_ENV_VARS):
        return
    path = path or default_token_path()
    if not path.exists():
        path.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        descriptor, written = tempfile.mkstemp(dir=path.parent)  # 0600
        try:
            with os.fdopen(descriptor, "w") as file:
                file.write(secrets.token_hex(TOKEN_BYTES))
            # whole or absent to a Ray starting meanwhile; a token another start wrote first stays
            with contextlib.suppress(FileExistsError):
                os.link(written, path)
        finally:
            os.unlink(written)
    if path.stat().st_mode & 0o077:
        path.chmod(PRIVATE_FILE)


def private_temp_dir() -> Path:
    """Ray's temp dir for a local instance, inside a 0700 folder of ours: $HEAVY_HOME/ray, else (where that would make
    a session's socket paths too long for Ray) heavy-ray-<uid> in the system's temp dir, else (that one too deep, or
    not a folder of ours: another user may have made it first) a fresh one there."""
    for private in (heavy_home() / "ray", Path(tempfile.gettempdir()) / f"heavy-ray-{os.getuid()}"):
        if len(os.fsencode(private / "tmp")) + SESSION_SOCKET_SUFFIX <= SOCKET_PATH_MAX and _made_private(private):
            return private / "tmp"  # Ray makes it 0777: its parent keeps others out
    return Path(tempfile.mkdtemp(prefix="heavy-ray-")) / "tmp"


def _made_private(folder: Path) -> bool:
    """`folder` made (or kept) a 0700 folder of ours; False when it is another user's, or not a folder (a link)."""
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=PRIVATE_DIR)
    found = folder.lstat()
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid():
        return False
    if found.st_mode & 0o077:  # one an earlier start, or the umask, left open
        folder.chmod(PRIVATE_DIR)
    return True


def start_local_ray(**options) -> None:
    """`ray.init` of a new local instance on loopback (no dashboard), its sessions in `private_temp_dir()` unless
    `options` name a `_temp_dir`; `options` go to `ray.init` as they are."""
    keep_token_private()
    options.setdefault("_temp_dir", str(private_temp_dir()))
    cluster_mode = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False  # so that 127.0.0.1 stays the node's address
    try:
        ray.init(address="local", include_dashboard=False, _node_ip_address=LOOPBACK, **options)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = cluster_mode  # a later ray.init(address=cluster) finds its node's address
