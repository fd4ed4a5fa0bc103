"""python sandbox: what the runner and the libraries research code imports leave within the code's reach."""

import asyncio

from heavy.tools.python_sandbox import PythonSandbox, SandboxLimits

LIMITS = SandboxLimits(wall_s=15, cpu_s=5, memory_bytes=512 << 20, output_bytes=4000)


def run(code, isolation="auto"):
    return asyncio.run(PythonSandbox(LIMITS, isolation).run(code))


def test_the_libc_handle_the_runner_confined_itself_with_is_gone():
    """It cached syscall and prctl, and calling a foreign function raises no audit event: found through gc, it
    made any system call (syscall(39) returned the code's pid) without the hook seeing one."""
    code = (
        "import gc\n"
        "handles = [o for o in gc.get_objects() if type(o).__name__ == 'CDLL']\n"
        "print([name for o in handles for name in ('syscall', 'prctl') if name in vars(o)])\n"
    )
    assert run(code).output == "[]\n"
