"""The distributions a user installs: the sdist `python -m build` makes from the checkout, and the wheel built from
that sdist (what `pip install heavy` gets). The sdist holds the three packages, the license and the build's files,
not the checkout's tests, scripts, docs or notes; the wheel holds every file of the packages (a data file the code
reads at run time but pyproject.toml does not declare fails here), the license and heavy's version; and the code run
from the unpacked wheel outside the checkout finds every file it names and serves the dashboard."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from heavy import __version__
from tests.deploy.conftest import REPO_ROOT
from tests.deploy.distribution import PACKAGES, build_sdist, build_wheel, package_files, unpack_sdist

pytestmark = pytest.mark.slow
# what the checkout holds besides the packages and is not a package's: never shipped
NOT_SHIPPED = (".git", ".venv", "__pycache__", "*.egg-info", "build", "artifacts", ".pytest_cache", ".ruff_cache",
               ".hypothesis")
SDIST_FILES = {"PKG-INFO", "pyproject.toml", "README.md", "LICENSE", "setup.cfg", "heavy.egg-info", *PACKAGES}


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    import shutil

    checkout = tmp_path_factory.mktemp("checkout") / "heavy"
    shutil.copytree(REPO_ROOT, checkout, ignore=shutil.ignore_patterns(*NOT_SHIPPED))
    return build_sdist(checkout, tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def wheel(sdist, tmp_path_factory) -> Path:
    return build_wheel(unpack_sdist(sdist, tmp_path_factory.mktemp("sdist")), tmp_path_factory.mktemp("wheel"))


def test_the_sdist_holds_the_packages_and_the_license_only(sdist, tmp_path):
    tree = unpack_sdist(sdist, tmp_path)
    assert {path.name for path in tree.iterdir()} == SDIST_FILES
    assert package_files(REPO_ROOT) - package_files(tree) == set()
    assert (tree / "LICENSE").read_text() == (REPO_ROOT / "LICENSE").read_text()


def test_the_wheel_holds_every_package_file_the_license_and_the_version(wheel):
    assert wheel.name == f"heavy-{__version__}-py3-none-any.whl"
    archive = zipfile.ZipFile(wheel)
    assert package_files(REPO_ROOT) - set(archive.namelist()) == set()
    dist_info = f"heavy-{__version__}.dist-info"
    assert f"{dist_info}/licenses/LICENSE" in archive.namelist()
    metadata = archive.read(f"{dist_info}/METADATA").decode()
    assert f"\nVersion: {__version__}\n" in metadata and "\nLicense-Expression: Apache-2.0\n" in metadata
    assert "heavy = heavy.cli:main" in archive.read(f"{dist_info}/entry_points.txt").decode()


def test_the_unpacked_wheel_runs_outside_the_checkout(wheel, tmp_path):
    """A pure-Python wheel unpacked is an installed one: on PYTHONPATH (ahead of the venv's editable checkout), run
    from a directory outside the checkout, with a home of its own."""
    root = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(root)
    env = {**{name: value for name, value in os.environ.items() if not name.startswith("HEAVY_")},
           "PYTHONPATH": str(root), "HOME": str(tmp_path), "HEAVY_HOME": str(tmp_path / "heavy-home")}
    smoke = subprocess.run([sys.executable, "-P", str(Path(__file__).with_name("wheel_smoke.py")), str(root)],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr[-3000:]
    version = subprocess.run([sys.executable, "-P", "-m", "heavy.cli", "--version"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60)
    assert version.stdout == f"heavy {__version__}\n", version.stderr
