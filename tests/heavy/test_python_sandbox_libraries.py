"""python sandbox: the libraries research code imports work, and what they bring stays fenced.

sympy imports ctypes (for sizeof(c_long)) and subprocess (sympy.printing), so both import inside the sandbox; the
audit hook still refuses loading native code, reaching memory by address and starting programs through them.
networkx assigns functions' __code__; the hook refuses that only for its own functions.
"""

import asyncio

import pytest

from heavy.tools.python_sandbox import PythonSandbox, SandboxLimits, user_namespaces_available

ISOLATIONS = ["auto", *(["user-namespaces"] if user_namespaces_available() else []), "process"]
LIMITS = SandboxLimits(wall_s=15, cpu_s=5, memory_bytes=512 << 20, output_bytes=4000)

CTYPES_AND_SUBPROCESS_ABUSE = """
import ctypes, subprocess, sys
import _posixsubprocess
data = b"in-process bytes"
attempts = {
    "libc": lambda: ctypes.CDLL("libc.so.6"),
    "pythonapi": lambda: ctypes.pythonapi.PyRun_SimpleString,
    "cast": lambda: ctypes.cast(id(data), ctypes.c_char_p),
    "memmove": lambda: ctypes.memmove(ctypes.create_string_buffer(8), id(data), 8),
    "string_at": lambda: ctypes.string_at(id(data), 8),
    "from_address": lambda: ctypes.c_char.from_address(id(data)),
    "addressof": lambda: ctypes.addressof(ctypes.c_int()),
    "ctypes anew": lambda: (sys.modules.pop("ctypes"), __import__("ctypes")),
    "subprocess": lambda: subprocess.run(["true"]),
    "fork_exec": lambda: _posixsubprocess.fork_exec(),
    "_posixsubprocess anew": lambda: (sys.modules.pop("_posixsubprocess"), __import__("_posixsubprocess")),
}
for name, attempt in attempts.items():
    try:
        attempt()
        print(name, "DONE")
    except (ImportError, PermissionError) as error:
        print(name, error)
"""
REFUSALS = [
    "libc sandbox: loading native code is not allowed (ctypes.dlopen)",
    "pythonapi sandbox: loading native code is not allowed (ctypes.dlsym)",
    "cast sandbox: access to memory by address is not allowed (ctypes.cast)",
    "memmove sandbox: access to memory by address is not allowed (ctypes.memmove)",
    "string_at sandbox: access to memory by address is not allowed (ctypes.string_at)",
    "from_address sandbox: access to memory by address is not allowed (ctypes.cdata)",
    "addressof sandbox: access to memory by address is not allowed (ctypes.addressof)",
    "ctypes anew sandbox: loading native code is not allowed (ctypes.dlopen)",
    "subprocess sandbox: starting programs is not allowed (subprocess.Popen)",
    "fork_exec sandbox: starting programs is not allowed (_posixsubprocess.fork_exec)",
    "_posixsubprocess anew sandbox: module '_posixsubprocess' is not available",
]


def run(code, isolation="auto"):
    return asyncio.run(PythonSandbox(LIMITS, isolation).run(code))


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_sympy_solves_and_simplifies(isolation):
    code = (
        "import sympy\n"
        "x = sympy.symbols('x')\n"
        "print(sympy.solve(x**2 - 2, x))\n"
        "print(sympy.simplify(sympy.sin(x)**2 + sympy.cos(x)**2 + (x**2 - 1) / (x - 1)))\n"
        "sympy.Rational(1, 3) + sympy.Rational(1, 6)\n"
    )
    outcome = run(code, isolation)
    assert (outcome.output, outcome.exit_code) == ("[-sqrt(2), sqrt(2)]\nx + 2\n1/2\n", 0)


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_networkx_algorithms_run(isolation):
    """networkx compiles its decorators on first call by assigning a function's __code__, which the hook refused."""
    code = "import networkx as nx\nnx.shortest_path(nx.path_graph(4), 0, 3), nx.diameter(nx.cycle_graph(6))"
    assert run(code, isolation).output == "([0, 1, 2, 3], 3)\n"


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_ctypes_and_subprocess_import_but_reach_no_native_code_memory_or_program(isolation):
    outcome = run(CTYPES_AND_SUBPROCESS_ABUSE, isolation)
    assert outcome.output.splitlines() == REFUSALS, outcome.output


def test_the_libc_handle_the_runner_confined_itself_with_is_gone():
    """It cached syscall and prctl, and calling a foreign function raises no audit event: found through gc, it
    made any system call (syscall(39) returned the code's pid) without the hook seeing one."""
    code = (
        "import gc\n"
        "handles = [o for o in gc.get_objects() if type(o).__name__ == 'CDLL']\n"
        "print([name for o in handles for name in ('syscall', 'prctl') if name in vars(o)])\n"
    )
    assert run(code).output == "[]\n"
