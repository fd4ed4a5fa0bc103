"""The program the python tool runs inside its sandbox process (standard library only; passed with `python -I -c`).

argv: <scratch dir> <limits as JSON>; the user's code arrives on stdin.
It lowers its own resource limits (soft = hard, so they cannot be raised again), puts up fences of its own the
kernel keeps (`confine`: no new sockets; with Landlock, reads only of what Python needs, writes only under the
scratch dir, no TCP, no signals beyond itself), installs an audit hook that refuses network, new processes, signals to
other processes, loading native code and reaching memory by address through ctypes (which libraries may import),
writes outside the scratch dir and opening another process's /proc files (its environment holds secrets when this
runs as the worker's own user), and runs the code like a notebook cell: a final
expression's value is printed. An audit hook lives in the interpreter the code runs in, so code can reach it (its
frames and closures); the kernel's fences (these, and the namespaces, uid and rlimits around this process) are the
ones that hold.
"""

import ast
import ctypes
import errno
import gc
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
    # ctypes may be imported (sympy needs c_long and sizeof), but not used to load or look up native code, nor to
    # reach memory by address (cast, memmove and memset: see allow_library_imports). Calling a foreign function and
    # making one from an address raise no event, nor do pointer types (a Union of an integer and a pointer reads any
    # address; so does numpy's __array_interface__), so native code stays within the code's reach: the kernel's
    # fences, which native code cannot lift, are the boundary, and these refusals give a clear message on the plain
    # routes. Not refused: get_errno/set_errno (ctypes' own copy of errno), create_string_buffer (memory of its own).
    "ctypes.dlopen": "loading native code",
    "ctypes.dlsym": "loading native code",
    "ctypes.dlsym/handle": "loading native code",
    "ctypes.call_function": "calling native code",  # _ctypes.call_function only
    "ctypes.cdata": "access to memory by address",
    "ctypes.cdata/buffer": "access to memory by address",
    "ctypes.addressof": "access to memory by address",
    "ctypes.string_at": "access to memory by address",
    "ctypes.wstring_at": "access to memory by address",
}
# Imported before the hook with fork_exec refused (allow_library_imports); importing it anew would bring that back.
REFUSED_MODULES = frozenset({"_posixsubprocess"})
CTYPES_ADDRESS_ARGUMENTS = {"cast": (0,), "memmove": (0, 1), "memset": (0,)}  # function -> positions of addresses
SIGNAL_EVENTS = {"os.kill": os.getpid, "os.killpg": os.getpgrp}  # event -> the one target allowed besides 0
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
PATH_EVENTS = {  # event -> positions of the path arguments it modifies
    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.chmod": (0,), "os.chown": (0,),
    "os.truncate": (0,), "os.utime": (0,), "os.rename": (0, 1), "os.link": (0, 1), "os.symlink": (1,),
    "shutil.rmtree": (0,), "shutil.copyfile": (1,), "shutil.move": (1,),
}
ALLOWED_WRITE_TARGETS = frozenset({"/dev/null"})
PROC_ENTRY = re.compile(r"/proc/(\d+)(/|$)")
# Kernel interfaces used by `confine` (linux/prctl.h, seccomp.h, filter.h, audit.h, landlock.h).
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
SECCOMP_RET_ALLOW, SECCOMP_RET_EPERM, SECCOMP_RET_ENOSYS = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38  # ERRNO(n)
BPF_LOAD_WORD, BPF_JUMP_EQUAL, BPF_JUMP_AT_LEAST, BPF_JUMP_ANY_BIT, BPF_RETURN = 0x20, 0x15, 0x35, 0x45, 0x06
SECCOMP_DATA_NR, SECCOMP_DATA_ARCH, SECCOMP_DATA_FIRST_ARG = 0, 4, 16  # offsets in struct seccomp_data (its low word)
X32_SYSCALL_BIT = 0x40000000  # x32 calls on x86_64 have numbers of their own
AUDIT_ARCH_X86_64, AUDIT_ARCH_AARCH64 = 0xC000003E, 0xC00000B7
# arch -> the syscalls refused: socket (no socket: no network of any kind, unix path sockets included),
# io_uring_setup (io_uring makes and connects sockets without the socket syscall), and no new process or program:
# fork, vfork (x86_64 only), execve, execveat
REFUSED_SYSCALLS = {AUDIT_ARCH_X86_64: (41, 425, 57, 58, 59, 322), AUDIT_ARCH_AARCH64: (198, 425, 221, 281)}
CLONE_SYSCALL = {AUDIT_ARCH_X86_64: 56, AUDIT_ARCH_AARCH64: 220}  # allowed for a thread only (its first argument)
CLONE3_SYSCALL = 435  # its flags are behind a pointer seccomp cannot read: ENOSYS, and glibc falls back to clone
CLONE_THREAD = 0x00010000
LANDLOCK_CREATE_RULESET, LANDLOCK_ADD_RULE, LANDLOCK_RESTRICT_SELF = 444, 445, 446  # same number on every arch
LANDLOCK_CREATE_RULESET_VERSION, LANDLOCK_RULE_PATH_BENEATH = 1, 1
LANDLOCK_WRITE_FILE, LANDLOCK_READ_FILE, LANDLOCK_READ_DIR, LANDLOCK_TRUNCATE = 1 << 1, 1 << 2, 1 << 3, 1 << 14
LANDLOCK_READS = LANDLOCK_READ_FILE | LANDLOCK_READ_DIR
LANDLOCK_FILE_RIGHTS = LANDLOCK_WRITE_FILE | LANDLOCK_READ_FILE | LANDLOCK_TRUNCATE  # the ones a non-directory takes
LANDLOCK_WRITES = {  # ABI version -> the write rights it knows: remove dir/file, make char/dir/reg/sock/fifo/block/sym
    1: LANDLOCK_WRITE_FILE | sum(1 << bit for bit in range(4, 13)), 2: 1 << 13, 3: LANDLOCK_TRUNCATE,  # refer, truncate
}
LANDLOCK_NET_TCP, LANDLOCK_NET_ABI = 0b11, 4  # bind and connect
# What the interpreter and the libraries it loads read besides the scratch dir and its own library dirs (the sys.path
# entries inside its prefixes); nothing else of the host (/etc/passwd, other users' files, other processes' /proc).
READABLE_SYSTEM_PATHS = (
    "/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib",  # shared libraries, locales (/usr/lib/locale)
    "/etc/ld.so.cache",  # the dynamic loader's index of them
    "/etc/localtime", "/usr/share/zoneinfo",  # time.localtime, zoneinfo
    "/etc/mime.types",  # mimetypes
    "/dev/null", "/dev/zero", "/dev/random", "/dev/urandom",
    "/proc/self",  # resolves to /proc/<its pid>: its own files only (glibc reads its maps for a thread's stack)
    "/sys/devices/system/cpu",  # os.cpu_count: the CPUs online
)
LANDLOCK_SCOPES, LANDLOCK_SCOPE_ABI = 0b11, 6  # abstract unix sockets and signals outside the sandbox


def apply_limits(limits: dict) -> None:
    for name, value in limits.items():
        resource.setrlimit(LIMITS[name], (value, value + 1 if name == "cpu_s" else value))  # +1 s: SIGXCPU first
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write fails with EFBIG instead of killing


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class LandlockRuleset(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class LandlockPathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def confine(scratch: str) -> None:
    """Fences the kernel keeps however the code gets past the audit hook: no socket, no new process (threads only)
    and no program started (seccomp), and where the kernel has Landlock, reads only of `scratch`, our interpreter's
    library dirs and READABLE_SYSTEM_PATHS, writes only under `scratch` (and /dev/null), no TCP, and no signal or
    abstract unix socket reaching a process outside this one. Each is skipped where the kernel lacks it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:  # both need it, and it bars setuid programs too
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    _restrict_filesystem(libc, scratch)
    _refuse_syscalls(libc)


def python_library_dirs() -> list[str]:
    """The dirs this interpreter imports from (stdlib, lib-dynload, site-packages): the sys.path entries inside its
    prefixes, so neither a whole prefix ('/usr' for a distribution's Python) nor a source checkout a .pth adds."""
    prefixes = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, sys.exec_prefix)}
    dirs = (os.path.realpath(entry) for entry in sys.path if entry and os.path.exists(entry))  # a stdlib zip too
    return [d for d in dirs if any(d == p or d.startswith(p.rstrip("/") + "/") for p in prefixes)]


def _refuse_syscalls(libc) -> None:
    arch = {"x86_64": AUDIT_ARCH_X86_64, "aarch64": AUDIT_ARCH_AARCH64}.get(os.uname().machine)
    if arch is None:
        return
    checks = [(BPF_JUMP_AT_LEAST, X32_SYSCALL_BIT), *((BPF_JUMP_EQUAL, nr) for nr in REFUSED_SYSCALLS[arch])]
    program = [  # (code, jump if true, jump if false, k); jumps count the instructions skipped
        (BPF_LOAD_WORD, 0, 0, SECCOMP_DATA_ARCH),
        (BPF_JUMP_EQUAL, 1, 0, arch),
        (BPF_RETURN, 0, 0, SECCOMP_RET_EPERM),  # a call through another ABI (int 0x80): refused
        (BPF_LOAD_WORD, 0, 0, SECCOMP_DATA_NR),
        *((code, len(checks) - i + 4, 0, k) for i, (code, k) in enumerate(checks)),  # a match: to "refused"
        (BPF_JUMP_EQUAL, 5, 0, CLONE3_SYSCALL),  # to "no such call"
        (BPF_JUMP_EQUAL, 0, 2, CLONE_SYSCALL[arch]),  # clone: its flags next; any other call: allowed
        (BPF_LOAD_WORD, 0, 0, SECCOMP_DATA_FIRST_ARG),
        (BPF_JUMP_ANY_BIT, 0, 1, CLONE_THREAD),  # a thread: allowed; a process: refused
        (BPF_RETURN, 0, 0, SECCOMP_RET_ALLOW),
        (BPF_RETURN, 0, 0, SECCOMP_RET_EPERM),  # refused
        (BPF_RETURN, 0, 0, SECCOMP_RET_ENOSYS),  # no such call
    ]
    filters = (SockFilter * len(program))(*(SockFilter(*instruction) for instruction in program))
    fprog = SockFprog(len(program), ctypes.addressof(filters))
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0 \
            and ctypes.get_errno() != errno.EINVAL:  # EINVAL: a kernel built without seccomp filters
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")


def _restrict_filesystem(libc, scratch: str) -> None:
    abi = libc.syscall(LANDLOCK_CREATE_RULESET, None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    if abi < 1:  # no Landlock in this kernel, or disabled
        return
    writes = sum(rights for version, rights in LANDLOCK_WRITES.items() if version <= abi)
    ruleset = LandlockRuleset(writes | LANDLOCK_READS, LANDLOCK_NET_TCP if abi >= LANDLOCK_NET_ABI else 0,
                              LANDLOCK_SCOPES if abi >= LANDLOCK_SCOPE_ABI else 0)
    ruleset_fd = libc.syscall(LANDLOCK_CREATE_RULESET, ctypes.byref(ruleset), ctypes.sizeof(ruleset), 0)
    if ruleset_fd < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    rules = [(scratch, writes | LANDLOCK_READS), *((t, writes | LANDLOCK_READS) for t in ALLOWED_WRITE_TARGETS),
             *((path, LANDLOCK_READS) for path in (*python_library_dirs(), *READABLE_SYSTEM_PATHS))]
    try:
        for path, rights in rules:
            try:
                path_fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:  # not on this system
                continue
            try:
                is_dir = os.path.isdir(f"/proc/self/fd/{path_fd}")
                rule = LandlockPathBeneath(rights if is_dir else rights & LANDLOCK_FILE_RIGHTS, path_fd)
                if libc.syscall(LANDLOCK_ADD_RULE, ruleset_fd, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0):
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule({path}) failed")
            finally:
                os.close(path_fd)
        if libc.syscall(LANDLOCK_RESTRICT_SELF, ruleset_fd, 0) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset_fd)


def allow_library_imports() -> None:
    """Libraries import ctypes (sympy: c_long, sizeof) and subprocess (sympy.printing). Both are imported here, before
    the audit hook, with what they offer that raises no audit event of its own refused: ctypes' cast, memmove and
    memset given an integer (a raw address), and _posixsubprocess.fork_exec (new programs; subprocess.Popen raises
    an event). They stay imported: a new ctypes opens a library (refused), a new _posixsubprocess is refused."""
    import _posixsubprocess

    def fork_exec(*args):
        raise PermissionError("sandbox: starting programs is not allowed (_posixsubprocess.fork_exec)")

    _posixsubprocess.fork_exec = fork_exec
    for name, positions in CTYPES_ADDRESS_ARGUMENTS.items():
        setattr(ctypes, name, _refusing_addresses(getattr(ctypes, name), name, positions))


def _refusing_addresses(function, name: str, positions: tuple[int, ...]):
    def guarded(*args):
        if any(isinstance(args[i], int) for i in positions if i < len(args)):
            raise PermissionError(f"sandbox: access to memory by address is not allowed (ctypes.{name})")
        return function(*args)

    return guarded


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
        if event in SIGNAL_EVENTS and args[0] not in (0, SIGNAL_EVENTS[event]()):  # 0: its own group
            raise PermissionError(f"sandbox: signalling other processes is not allowed ({event})")
        # e.g. this hook's code swapped for a no-op; other functions' may change (networkx compiles its decorators so)
        if event == "object.__setattr__" and args[1] == "__code__" and args[0] in (hook, inside, another_process):
            raise PermissionError("sandbox: replacing the sandbox's code is not allowed")
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
    confine(scratch)
    allow_library_imports()
    gc.collect()  # confine's libc: cyclic garbage (it caches syscall and prctl, which hold it) the code could find
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
