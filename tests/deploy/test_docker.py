"""deploy/docker: no Docker engine runs here, so the images are not built. What is checked offline: the Dockerfiles
parse into known instructions, copy only paths that exist, pin the same torch/ray as pyproject.toml, run as a
non-root user with HEAVY_HOME as a volume, and start a real command of the project; the shared install script
is valid bash; and the wheel `pip install` builds from the copied tree carries every non-Python package file and the
license."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
import zipfile
from pathlib import Path

import pytest

from heavy import __version__
from tests.deploy.commands import check_commands
from tests.deploy.conftest import DEPLOY, REPO_ROOT
from tests.deploy.distribution import PACKAGES, build_wheel, package_files

DOCKERFILES = sorted((DEPLOY / "docker").glob("Dockerfile.*"))
INSTRUCTIONS = {"FROM", "ARG", "ENV", "COPY", "RUN", "USER", "WORKDIR", "VOLUME", "EXPOSE", "ENTRYPOINT", "CMD"}


def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with backslash continuations joined and comments dropped."""
    logical, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        logical.append(pending.strip())
        pending = ""
    assert not pending, f"{path}: dangling line continuation"
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in logical]


def _pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    return dict(dep.split("==", 1) for dep in project["dependencies"] if "==" in dep)


def _args(instructions, name: str) -> dict[str, str]:
    return dict(arg.split("=", 1) for kind, arg in instructions if kind == name and "=" in arg)


def _env(instructions) -> dict[str, str]:
    env = {}
    for kind, arg in instructions:
        if kind == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", arg)))
    return env


@pytest.fixture(params=DOCKERFILES, ids=[path.name for path in DOCKERFILES])
def dockerfile(request) -> tuple[Path, list[tuple[str, str]]]:
    return request.param, parse_dockerfile(request.param)


def test_both_images_exist():
    assert {path.name for path in DOCKERFILES} == {"Dockerfile.cpu", "Dockerfile.cuda"}


def test_instructions_are_known_and_copied_paths_exist(dockerfile):
    path, instructions = dockerfile
    assert {kind for kind, _ in instructions} <= INSTRUCTIONS
    assert instructions[0][0] == "FROM"
    for kind, arg in instructions:
        if kind == "COPY":
            *sources, _ = arg.split()
            for source in sources:
                assert (REPO_ROOT / source).exists(), f"{path.name}: COPY {source} (build context = repo root)"
    copied = {arg.split()[0] for kind, arg in instructions if kind == "COPY"}
    assert set(PACKAGES) <= copied and "pyproject.toml" in " ".join(copied)


def test_pins_match_pyproject(dockerfile):
    path, instructions = dockerfile
    args, pins = _args(instructions, "ARG"), _pyproject_pins()
    assert args["TORCH_VERSION"] == pins["torch"]
    if "ray" in pins:  # the runtime's Ray pin (issue 6) lands in pyproject.toml
        assert args["RAY_VERSION"] == pins["ray"]
    cpu_build = args.get("TORCH_INDEX_URL", "").endswith("/cpu")
    assert cpu_build == (path.name == "Dockerfile.cpu")


# Requires-Dist of torch's Linux wheels on PyPI (what Dockerfile.cuda and a plain `pip install heavy` get), read from
# PyPI's metadata: the CPU build installed here requires no triton, so the pin cannot be checked against it offline.
TRITON_OF_TORCH = {"2.13.0": "3.7.1"}


def test_triton_is_the_one_torch_requires():
    """pip refuses to install triton==X beside a torch that pins another: with PyPI's torch 2.13.0 (triton 3.7.1)
    a triton 3.9.0 pin failed the CUDA image's build and `pip install heavy` with ResolutionImpossible."""
    pins = _pyproject_pins()
    assert pins["triton"] == TRITON_OF_TORCH[pins["torch"]], "a new torch: look its triton up on PyPI"


def test_runs_as_non_root_with_heavy_home_as_a_volume(dockerfile):
    _, instructions = dockerfile
    users = [arg for kind, arg in instructions if kind == "USER"]
    # numeric once its ARG is substituted: a pod with runAsNonRoot and no runAsUser refuses a named user
    # ("image has non-numeric user (heavy), cannot verify user is non-root")
    uid = re.sub(r"\$\{(\w+)\}", lambda arg: _args(instructions, "ARG")[arg[1]], users[-1])
    assert uid.isdigit() and int(uid) > 0, users[-1]
    env = _env(instructions)
    [volume] = [json.loads(arg) for kind, arg in instructions if kind == "VOLUME"]
    assert volume == [env["HEAVY_HOME"]]
    assert env["HEAVY_API_HOST"] == "0.0.0.0"  # reachable from outside the container


def test_entrypoint_and_default_command_are_real(dockerfile):
    _, instructions = dockerfile
    entrypoint = [json.loads(arg) for kind, arg in instructions if kind == "ENTRYPOINT"][-1]
    command = [json.loads(arg) for kind, arg in instructions if kind == "CMD"][-1]
    assert entrypoint == ["tini", "--"]  # PID 1 that forwards signals: workers checkpoint on SIGTERM
    check_commands([command])


def test_the_dependencies_are_installed_before_the_code_is_copied(dockerfile):
    """The dependencies' layer (torch, CUDA's libraries, ray: GBs) is built from pyproject.toml and the install
    script alone, so Docker's cache keeps it across edits of the code; the project goes in after, without deps."""
    _, instructions = dockerfile
    runs = [index for index, (kind, arg) in enumerate(instructions) if kind == "RUN"]
    dependencies, project = runs[0], runs[-1]
    assert instructions[dependencies][1].startswith("heavy-install ")
    copied_before = {source for kind, arg in instructions[:dependencies] if kind == "COPY"
                     for source in arg.split()[:-1]}
    assert copied_before == {"pyproject.toml", "deploy/docker/install.sh"}
    assert "--no-deps" in instructions[project][1] and "pip check" in instructions[project][1]


def test_the_build_context_is_what_the_images_copy():
    """.dockerignore lists what the Dockerfiles copy and nothing else (a COPY it leaves out fails the build, with
    "not found"), then drops the checkout's bytecode from it."""
    patterns = [line for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    copied = {source for path in DOCKERFILES for kind, arg in parse_dockerfile(path) if kind == "COPY"
              for source in arg.split()[:-1]}
    assert patterns[0] == "*"
    assert {pattern[1:] for pattern in patterns if pattern.startswith("!")} == copied
    assert patterns[-2:] == ["**/__pycache__", "**/*.pyc"]


def test_install_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(DEPLOY / "docker" / "install.sh")], check=True)


def test_the_wheel_built_from_the_copied_tree_carries_every_package_file(tmp_path):
    """The images copy a few paths and install them non-editable: data files (kernel sources, dashboard assets)
    must be in the wheel built from exactly those paths, or the container misses them."""
    context = tmp_path / "src"
    for kind, arg in parse_dockerfile(DEPLOY / "docker" / "Dockerfile.cpu"):
        if kind == "COPY" and not arg.startswith("deploy/"):
            *sources, target = arg.split()
            for source in sources:
                destination = context / Path(target).relative_to("/src/heavy") / (
                    source if target.endswith("/") else "")
                copy = shutil.copytree if (REPO_ROOT / source).is_dir() else shutil.copy
                destination.parent.mkdir(parents=True, exist_ok=True)
                copy(REPO_ROOT / source, destination)
    in_wheel = set(zipfile.ZipFile(build_wheel(context, tmp_path)).namelist())
    assert package_files(REPO_ROOT) - in_wheel == set()
    assert f"heavy-{__version__}.dist-info/licenses/LICENSE" in in_wheel  # Apache-2.0: the image ships its text
