"""Building heavy's distributions as pip and `python -m build` do, offline: setuptools from the venv (no build
isolation, so nothing is downloaded)."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

PACKAGES = ("kernels", "runtime", "heavy")
BUILD_TIMEOUT_S = 300


def build_wheel(source: Path, out: Path) -> Path:
    """The wheel of the project at `source` (a tree or an unpacked sdist), as `pip install SOURCE` builds it."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(source)], check=True, capture_output=True, timeout=BUILD_TIMEOUT_S)
    [wheel] = out.glob("heavy-*.whl")
    return wheel


def build_sdist(source: Path, out: Path) -> Path:
    """The sdist of the project at `source`, through setuptools' PEP 517 hook (what `python -m build` calls)."""
    built = subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta; "
                            "print(build_meta.build_sdist(sys.argv[1]))", str(out)],
                           cwd=source, check=True, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    return out / built.stdout.strip().splitlines()[-1]


def unpack_sdist(sdist: Path, out: Path) -> Path:
    with tarfile.open(sdist) as archive:
        archive.extractall(out, filter="data")
    [tree] = out.iterdir()
    return tree


def package_files(root: Path) -> set[str]:
    """Every file of the three packages under `root`, as a path relative to it (compiled bytecode left out)."""
    return {str(path.relative_to(root)) for package in PACKAGES for path in (root / package).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"}
