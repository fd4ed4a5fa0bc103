"""deploy/k8s/components/sandbox-userns: the worker pod's settings for the python tool's user namespaces, and its
seccomp profile (heavy-sandbox.json) loaded here with libseccomp as a container runtime loads a Localhost profile:
under it the sandbox makes its namespaces (as root, and the user-namespace probe as an unprivileged user), where the
same profile without `unshare`, as the runtimes' defaults have it, does not; what it denies stays denied."""

from __future__ import annotations

import ctypes.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from heavy.tools.python_sandbox import UNSHARE_USER
from tests.deploy.conftest import DEPLOY, REPO_ROOT
from tests.deploy.kustomize import render

COMPONENT = DEPLOY / "k8s" / "components" / "sandbox-userns"
PROFILE = json.loads((COMPONENT / "heavy-sandbox.json").read_text())
NOBODY = "65534"
needs_root_and_libseccomp = pytest.mark.skipif(
    os.geteuid() != 0 or not ctypes.util.find_library("seccomp"),
    reason="loads a seccomp profile (libseccomp) and runs a probe as another user (root)")


def _worker(objects: list[dict]) -> dict:
    [worker] = [obj for obj in objects if obj["kind"] == "Deployment" and obj["metadata"]["name"] == "heavy-worker"]
    return worker["spec"]["template"]["spec"]


@pytest.mark.parametrize("overlay", ["cpu", "gpu"], ids=["cpu-overlay", "gpu-overlay"])
def test_the_worker_pod_gets_the_profile_its_own_user_namespace_and_an_unmasked_proc(overlay, tmp_path):
    k8s = os.path.relpath(DEPLOY / "k8s", tmp_path)  # kustomize takes relative paths only
    (tmp_path / "kustomization.yaml").write_text(  # both components beside either overlay, as the README says
        f"resources: [{k8s}/overlays/{overlay}]\n"
        f"components: [{k8s}/components/redis-sentinel, {k8s}/components/sandbox-userns]\n")
    pod = _worker(render(tmp_path))
    assert pod["hostUsers"] is False  # root in the pod is no one on the node
    profile = pod["securityContext"]["seccompProfile"]
    assert profile["type"] == "Localhost" and Path(profile["localhostProfile"]).name == "heavy-sandbox.json"
    assert pod["securityContext"]["appArmorProfile"] == {"type": "Unconfined"}  # the default one denies mount
    [container] = pod["containers"]
    assert container["securityContext"]["procMount"] == "Unmasked" and pod["securityContext"]["runAsNonRoot"]


def test_the_profile_denies_kernel_surfaces_the_worker_never_uses_and_allows_the_namespaces():
    allowed, denied = (set(rule["names"]) for rule in PROFILE["syscalls"])
    assert PROFILE["defaultAction"] == "SCMP_ACT_ERRNO" and PROFILE["defaultErrnoRet"] == 38  # newer calls: ENOSYS
    assert {"unshare", "mount", "umount2", "clone", "clone3", "seccomp", "prctl", "landlock_create_ruleset",
            "landlock_add_rule", "landlock_restrict_self"} <= allowed
    assert "chroot" in allowed  # the sandbox enters the code's read-only root with it (`unshare --root`)
    assert {"bpf", "keyctl", "ptrace", "setns", "io_uring_setup", "init_module", "kexec_load", "userfaultfd",
            "perf_event_open", "process_vm_readv"} <= denied
    assert not allowed & denied


def _under(profile: dict, argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    return subprocess.run([sys.executable, "-m", "tests.deploy.seccomp_profile", str(path), *argv], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "HEAVY_HOME": str(tmp_path / "home")})


def _without(profile: dict, name: str) -> dict:
    return {**profile, "syscalls": [{**rule, "names": [n for n in rule["names"] if n != name]}
                                    for rule in profile["syscalls"]]}


@needs_root_and_libseccomp
def test_under_the_profile_the_sandbox_makes_its_namespaces_and_not_without_unshare(tmp_path):
    run_in_sandbox = ("import asyncio\nfrom heavy.tools.python_sandbox import PythonSandbox\n"
                      "outcome = asyncio.run(PythonSandbox(isolation='namespaces').run('print(6 * 7)'))\n"
                      "print(outcome.isolation, outcome.output.strip())")
    assert _under(PROFILE, [sys.executable, "-c", run_in_sandbox], tmp_path).stdout.split() == ["namespaces", "42"]
    # the worker's user: the probe of heavy/tools/python_sandbox.py for user-namespaces, and the private tmpfs
    as_worker = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *UNSHARE_USER, "sh", "-c",
                 "mount -t tmpfs -o size=1m none /tmp && echo isolated"]
    assert _under(PROFILE, as_worker, tmp_path).stdout.strip() == "isolated"
    refused = _under(_without(PROFILE, "unshare"), as_worker, tmp_path)
    assert refused.returncode != 0 and "isolated" not in refused.stdout
