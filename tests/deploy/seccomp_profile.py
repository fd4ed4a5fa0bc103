"""Runs a command under an OCI seccomp profile (the JSON a Kubernetes Localhost profile is), loaded with the host's
libseccomp the way a container runtime loads it: the default action with its errno, then each rule's names (names
this libseccomp does not know are skipped, as runc skips them), for the architectures listed that this machine
runs. Enough to see what a profile lets a program do, without a container runtime."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import sys

ARCHES = {"SCMP_ARCH_X86_64": 0xC000003E, "SCMP_ARCH_AARCH64": 0xC00000B7}
ALLOW = 0x7FFF0000  # SCMP_ACT_ALLOW


def _errno_action(errno: int) -> int:
    return 0x00050000 | (errno & 0xFFFF)  # SCMP_ACT_ERRNO(errno)


def load(profile: dict) -> None:
    """Install `profile` as this process's seccomp filter (inherited by what it runs; no_new_privs is set)."""
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_arch_remove.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_arch_native.restype = ctypes.c_uint32
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    ctx = lib.seccomp_init(_errno_action(profile.get("defaultErrnoRet", 1)))
    native = lib.seccomp_arch_native()
    if native not in [ARCHES[name] for name in profile["architectures"]]:
        raise SystemExit(f"the profile lists no architecture of this machine ({native:#x})")
    for rule in profile["syscalls"]:
        assert not rule.get("args"), "argument filters are not implemented here"
        action = ALLOW if rule["action"] == "SCMP_ACT_ALLOW" else _errno_action(rule.get("errnoRet", 1))
        for name in rule["names"]:
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number >= 0 and lib.seccomp_rule_add(ctx, action, number, 0) != 0:
                raise SystemExit(f"seccomp_rule_add({name}) failed")
    if lib.seccomp_load(ctx) != 0:
        raise SystemExit(f"seccomp_load failed: {os.strerror(ctypes.get_errno())}")


if __name__ == "__main__":  # python -m tests.deploy.seccomp_profile PROFILE.json COMMAND...
    with open(sys.argv[1]) as file:
        load(json.load(file))
    os.execvp(sys.argv[2], sys.argv[2:])
