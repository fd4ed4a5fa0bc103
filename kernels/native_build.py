"""Compiling the native CPU kernels (csrc/) on first use, cached by source hash, and reading the CPU's flags.

A kernel is compiled with the system C++ compiler ($CXX, default c++) into $HEAVY_KERNEL_CACHE (default
$HEAVY_HOME/kernels, HEAVY_HOME defaulting to ~/.cache/heavy), under a name that carries the hash of its source,
the headers it includes and its flags, so an edit rebuilds it. The libraries link OpenMP by soname and so share
torch's libgomp thread pool.
"""

import ctypes
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

CSRC = Path(__file__).with_name("csrc")
SHARED_LIBRARY_FLAGS = ("-O3", "-fopenmp", "-shared", "-fPIC")


def cpu_flags() -> set[str]:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return set()
    return set(flags.split(":", 1)[1].split())


def _build(source: Path, flags: tuple[str, ...], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    compiler = os.environ.get("CXX", "c++")
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        subprocess.run([compiler, *flags, str(source), "-o", str(built)], check=True, capture_output=True)
        os.replace(built, target)  # atomic: concurrent builders never load a half-written file


def compile_library(name: str, source: Path, flags: tuple[str, ...], headers: tuple[Path, ...] = ()) -> ctypes.CDLL:
    """Build (once per content) and load `source`; raises OSError or subprocess.CalledProcessError (with the
    compiler's stderr) when it cannot."""
    code = source.read_bytes() + b"".join(header.read_bytes() for header in headers)
    digest = hashlib.sha256(code + " ".join(flags).encode()).hexdigest()[:16]
    home = Path(os.environ.get("HEAVY_HOME") or Path.home() / ".cache" / "heavy").expanduser()
    cache = Path(os.environ.get("HEAVY_KERNEL_CACHE") or home / "kernels")
    target = cache / f"{name}-{digest}.so"
    if not target.exists():
        _build(source, flags, target)
    return ctypes.CDLL(str(target))


def build_error_details(error: Exception) -> str:
    """The tail of the compiler's stderr, for a warning."""
    return (getattr(error, "stderr", b"") or b"").decode(errors="replace")[-2000:]
