"""The program the python tool runs inside its sandbox process (standard library only; passed with `python -I -c`).

argv: <scratch dir> <limits as JSON>; the user's code arrives on stdin. It lowers its own resource limits
(soft = hard, so they cannot be raised again), installs an audit hook that refuses network, new processes,
native code, writes outside the scratch dir and opening another process's /proc files (its environment holds
secrets when this runs as the worker's own user), and runs the code like a notebook cell: a final expression's
value is printed. The audit hook backs the OS fences (namespaces, uid, rlimits); it is not the only one.
"""

import ast
import json
import os
import re
import resource
import signal
import sys
import traceback

LIMITS = {
    "cpu_s": resource.RLIMIT_CPU,
    "memory_bytes": resource.RLIMIT_AS,
    "processes": resource.RLIMIT_NPROC,
    "file_bytes": resource.RLIMIT_FSIZE,
    "open_files": resource.RLIMIT_NOFILE,
}
REFUSED_EVENTS = {
    "socket.__new__": "network access",
    "socket.connect": "network access",
    "socket.bind": "network access",
    "socket.getaddrinfo": "network access",
    "subprocess.Popen": "starting programs",
    "os.system": "starting programs",
    "os.exec": "starting programs",
    "os.posix_spawn": "starting programs",
    "os.spawn": "starting programs",
    "os.fork": "starting processes",
    "os.forkpty": "starting processes",
    "ctypes.dlopen": "native code",
    "ctypes.dlsym": "native code",
    "ctypes.cdata": "native code",
}
# fork_exec in _posixsubprocess raises no audit event of its own, so the module itself stays out of reach.
REFUSED_MODULES = frozenset({"_posixsubprocess", "_ctypes", "ctypes"})
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
PATH_EVENTS = {  # event -> positions of the path arguments it modifies
    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.chmod": (0,), "os.chown": (0,),
    "os.truncate": (0,), "os.utime": (0,), "os.rename": (0, 1), "os.link": (0, 1), "os.symlink": (1,),
    "shutil.rmtree": (0,), "shutil.copyfile": (1,), "shutil.move": (1,),
}
ALLOWED_WRITE_TARGETS = frozenset({"/dev/null"})
PROC_ENTRY = re.compile(r"/proc/(\d+)(/|$)")


def apply_limits(limits: dict) -> None:
    for name, value in limits.items():
        resource.setrlimit(LIMITS[name], (value, value + 1 if name == "cpu_s" else value))  # +1 s: SIGXCPU first
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write fails with EFBIG instead of killing


def install_guard(scratch: str) -> None:
    scratch = os.path.realpath(scratch)

    def inside(path) -> bool:
        if isinstance(path, int):
            return True  # an fd the process already holds
        real = os.path.realpath(os.fsdecode(path))
        return real == scratch or real.startswith(scratch + os.sep) or real in ALLOWED_WRITE_TARGETS

    def another_process(path) -> bool:
        """/proc/<pid>/... of a pid not ours (/proc/self resolves to ours)."""
        if isinstance(path, int):
            return False
        entry = PROC_ENTRY.match(os.path.realpath(os.fsdecode(path)))
        return entry is not None and int(entry.group(1)) != os.getpid()

    def hook(event: str, args: tuple) -> None:
        if event in REFUSED_EVENTS:
            raise PermissionError(f"sandbox: {REFUSED_EVENTS[event]} is not allowed ({event})")
        if event == "import" and args[0] in REFUSED_MODULES:
            raise ImportError(f"sandbox: module {args[0]!r} is not available")
        if event == "open":
            path, mode, flags = args
            opens_dir = mode is None and not isinstance(path, int) and os.path.isdir(path)  # base for dir_fd tricks
            if path is not None and ((flags or 0) & WRITE_FLAGS or opens_dir) and not inside(path):
                raise PermissionError(f"sandbox: writing outside the scratch directory is not allowed ({path})")
            if path is not None and another_process(path):
                raise PermissionError(f"sandbox: reading another process's files is not allowed ({path})")
        elif event in PATH_EVENTS:
            for position in PATH_EVENTS[event]:
                if position < len(args) and args[position] is not None and not inside(args[position]):
                    raise PermissionError(f"sandbox: changing files outside the scratch directory ({args[position]})")

    sys.addaudithook(hook)


def compile_cell(code: str):
    """Compile like a notebook cell: when the last statement is an expression, print its value."""
    tree = ast.parse(code, filename="<python>")
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = tree.body[-1]
        show = ast.parse("__sandbox_show__(None)").body[0]
        show.value.args = [last.value]
        tree.body[-1] = ast.copy_location(show, last)
        ast.fix_missing_locations(tree)
    return compile(tree, "<python>", "exec")


def show(value) -> None:
    if value is not None:
        print(repr(value))


def main() -> int:
    scratch, limits = sys.argv[1], json.loads(sys.argv[2])
    code = sys.stdin.read()
    os.chdir(scratch)
    apply_limits(limits)
    try:
        program = compile_cell(code)
    except SyntaxError:
        traceback.print_exc(limit=0)
        return 1
    install_guard(scratch)
    try:
        exec(program, {"__name__": "__main__", "__sandbox_show__": show})
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)  # sys.exit("message"), as the interpreter itself would show it
        return 1
    except BaseException:
        kind, error, tb = sys.exc_info()
        traceback.print_exception(kind, error, tb.tb_next)  # drop this runner's frame
        return 1
    return 0


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    sys.exit(main())
