"""python sandbox: network, fork bomb, memory hog, infinite loop, writes outside its dir — all contained.

Most cases go through the full sandbox (namespaces + nobody + rlimits + audit hook where available). The
`os_fence` cases run a plain interpreter in the same namespaces *without* the runner's audit hook, to show the
operating-system fences hold on their own.
"""

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from heavy.config import get_settings
from heavy.tools.base import ToolContext, ToolExecutor, ToolLimits
from heavy.tools.python_exec import PythonTool, render_outcome
from heavy.tools.python_sandbox import (
    SANDBOX_UIDS,
    PythonSandbox,
    SandboxLimits,
    namespace_command,
    namespaces_available,
    user_namespaces_available,
)
from tests.heavy.loopback_server import LoopbackServer, html_page

needs_namespaces = pytest.mark.skipif(not namespaces_available(), reason="needs root with unshare/setpriv")
needs_user_namespaces = pytest.mark.skipif(not user_namespaces_available(),
                                           reason="the kernel refuses this user a user namespace")
# every isolation this machine has ("auto" is the strongest of them)
ISOLATIONS = ["auto", *(["user-namespaces"] if user_namespaces_available() else []), "process"]
LIMITS = SandboxLimits(wall_s=15, cpu_s=5, memory_bytes=512 << 20, file_bytes=1 << 20, output_bytes=4000)


def run(code, limits=LIMITS, isolation="auto"):
    return asyncio.run(PythonSandbox(limits, isolation).run(code))


def run_without_audit_hook(program, uid=SANDBOX_UIDS[0], data_dirs=()):
    """A plain interpreter in the sandbox's namespaces and uid (None: user-namespaces isolation): only the operating
    system's fences apply (not the runner's either: no Landlock)."""
    command = namespace_command([sys.executable, "-I", "-c", program], LIMITS, uid, data_dirs)
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


@pytest.fixture
def host_server():
    with LoopbackServer({"/": html_page("host", "<p>internal</p>")}) as server:
        yield server


def test_runs_code_like_a_notebook_cell():
    outcome = run("x = 6 * 7\nprint('hello')\nx")
    assert (outcome.output, outcome.exit_code, outcome.timed_out) == ("hello\n42\n", 0, False)
    failing = run("raise ValueError('bad input')")
    assert failing.exit_code == 1 and "ValueError: bad input" in failing.output
    assert run("import sys\nsys.exit('stopped early')").output == "stopped early\n"


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_network_is_refused(host_server, isolation):
    code = (
        "import urllib.request\n"
        f"urllib.request.urlopen('http://127.0.0.1:{host_server.port}/', timeout=3).read()"
    )
    outcome = run(code, isolation=isolation)
    assert outcome.exit_code == 1 and "network access is not allowed" in outcome.output
    assert host_server.requests == []


@needs_namespaces
def test_os_fence_network_namespace_has_no_route_to_the_host(host_server):
    program = (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {host_server.port}), timeout=3)\n"
        "    print('CONNECTED')\n"
        "except OSError as exc:\n"
        "    print('refused', exc.errno)\n"
    )
    result = run_without_audit_hook(program)
    assert result.stdout.startswith("refused"), result.stdout + result.stderr
    assert host_server.requests == []


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_fork_bomb_is_contained(isolation):
    outcome = run("import os\nwhile True:\n    os.fork()", isolation=isolation)
    assert outcome.exit_code == 1 and "starting processes is not allowed" in outcome.output
    spawn = run("import subprocess\nsubprocess.run(['sh', '-c', ':(){ :|:& };:'])", isolation=isolation)
    assert spawn.exit_code == 1 and "starting programs is not allowed" in spawn.output


@needs_namespaces
def test_thread_bomb_stops_at_the_process_limit():
    code = (
        "import threading, time\n"
        "started = 0\n"
        "try:\n"
        "    while True:\n"
        "        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
        "        started += 1\n"
        "except RuntimeError as exc:\n"
        "    print('stopped after', started, exc)\n"
        "import os\n"
        "os._exit(0)\n"
    )
    outcome = run(code, SandboxLimits(wall_s=15, processes=8))
    assert "can't start new thread" in outcome.output
    assert int(outcome.output.split()[2]) < 8


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_memory_hog_is_contained(isolation):
    hog = "blocks = []\nwhile True:\n    blocks.append(bytearray(32 << 20))"
    outcome = run(hog, SandboxLimits(memory_bytes=256 << 20), isolation)
    assert outcome.exit_code == 1 and "MemoryError" in outcome.output


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_infinite_loop_hits_the_cpu_limit(isolation):
    limits = SandboxLimits(wall_s=20, cpu_s=1)
    outcome = run("while True:\n    pass", limits, isolation)
    assert not outcome.timed_out and outcome.signal_name in ("SIGXCPU", "SIGKILL")
    assert render_outcome(outcome, limits.wall_s).endswith("[killed: CPU time limit reached]")


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_sleeping_program_is_killed_at_the_wall_clock_limit(isolation):
    # 3 s: the namespaces' setup (mounts, the code's root) takes up to a second on a loaded machine before "started"
    outcome = run("import time\nprint('started', flush=True)\ntime.sleep(60)", SandboxLimits(wall_s=3), isolation)
    assert outcome.timed_out and outcome.exit_code is None and outcome.output == "started\n"


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_writes_outside_the_scratch_dir_are_contained(tmp_path, isolation):
    tmp_path.chmod(0o777)
    outside = tmp_path / "escape.txt"
    code = (
        "import os\n"
        "open('inside.txt', 'w').write('ok')\n"
        "print('inside', open('inside.txt').read())\n"
        f"for target in [{str(outside)!r}, '../escape.txt', '/etc/heavy-escape', {str(tmp_path / 'link')!r}]:\n"
        "    try:\n"
        "        open(target, 'w').write('escaped')\n"
        "        print('WROTE', target)\n"
        "    except OSError as exc:\n"
        "        print('refused', type(exc).__name__)\n"
        "try:\n"
        f"    fd = os.open({str(tmp_path)!r}, os.O_RDONLY)\n"
        "    os.open('escape.txt', os.O_WRONLY | os.O_CREAT, dir_fd=fd)\n"
        "    print('WROTE via dir_fd')\n"
        "except OSError as exc:\n"
        "    print('refused', type(exc).__name__)\n"
    )
    outcome = run(code, isolation=isolation)
    assert outcome.output.startswith("inside ok\n"), outcome.output
    assert "WROTE" not in outcome.output and outcome.output.count("refused") == 5
    assert not outside.exists() and not os.path.exists("/etc/heavy-escape") and list(tmp_path.iterdir()) == []


@needs_namespaces
def test_os_fence_nobody_cannot_write_host_files_and_root_home_is_hidden(tmp_path):
    tmp_path.chmod(0o777)
    root_home = os.path.expanduser("~root")  # the code's root has no /etc/passwd to look it up in
    program = (
        "import os\n"
        f"home = {root_home!r}\n"
        "print(os.getuid(), sorted(os.listdir(home)) if os.path.isdir(home) else [])\n"
        f"for target in ['/etc/heavy-escape', {str(tmp_path / 'escape.txt')!r}]:\n"
        "    try:\n"
        "        open(target, 'w').write('escaped')\n"
        "    except OSError as exc:\n"
        "        print('refused', exc.errno)\n"
    )
    result = run_without_audit_hook(program)
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{SANDBOX_UIDS[0]} "), result.stdout + result.stderr
    assert ".ssh" not in lines[0] and ".cache" not in lines[0]
    assert lines[1:] == ["refused 30", "refused 2"]  # EROFS: its root is read-only; the host /tmp is not even visible
    assert list(tmp_path.iterdir()) == []


@needs_user_namespaces
def test_os_fence_user_namespaces_read_only_mounts_hidden_home_no_capabilities_no_other_processes(host_server):
    """What holds without the audit hook when the code runs as our own uid: every mount read-only (outside the
    private tmpfs), the home directory and secrets hidden, no capability left to unmount them, /proc showing only
    the sandbox's processes, no network."""
    program = (
        "import ctypes, os, socket\n"
        "status = open('/proc/self/status').read()\n"
        "print('caps', status.split('CapEff:')[1].split()[0])\n"
        "print('pids', len([p for p in os.listdir('/proc') if p.isdigit()]))\n"
        "print('home', sorted(os.listdir(os.path.expanduser('~'))))\n"
        "for target in ['/etc/heavy-escape', os.path.join(os.path.dirname(os.__file__), 'heavy-escape')]:\n"
        "    try:\n"
        "        open(target, 'w').write('escaped')\n"
        "        print('WROTE', target)\n"
        "    except OSError as exc:\n"
        "        print('refused', exc.errno)\n"
        "open('scratch.txt', 'w').write('ok')\n"
        "home = os.path.expanduser('~')\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print('umount', libc.umount2(home.encode(), 0), ctypes.get_errno())\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {host_server.port}), timeout=3)\n"
        "    print('CONNECTED')\n"
        "except OSError as exc:\n"
        "    print('no network', exc.errno)\n"
    )
    result = run_without_audit_hook(program, uid=None)
    lines = result.stdout.splitlines()
    assert lines[0] == "caps 0000000000000000", result.stdout + result.stderr
    assert int(lines[1].split()[1]) <= 3  # the shell, the interpreter, its umount child at most: nothing of ours
    assert ".ssh" not in lines[2] and ".cache" not in lines[2]
    assert lines[3:5] == ["refused 30", "refused 30"]  # EROFS: the host's files, even our own, are read-only
    assert lines[5] != "umount 0" and lines[6].startswith("no network"), result.stdout
    assert not os.path.exists("/etc/heavy-escape") and host_server.requests == []


@pytest.fixture(params=["beside the tests", "under /tmp"])
def data_dir(request):
    """A HEAVY_HOME outside the home directory (as the image's /var/lib/heavy), or under /tmp (which the sandbox
    covers with a private tmpfs of its own), holding what the embedded Redis writes there: every tenant's jobs in an
    append-only file, world-readable as redis-server creates it."""
    where = Path(__file__).parent if request.param == "beside the tests" else Path("/tmp")
    path = Path(tempfile.mkdtemp(prefix=".sandbox-data-", dir=where))
    try:
        path.chmod(0o755)
        (path / "redis").mkdir(mode=0o755)
        (path / "redis" / "appendonly.aof").write_text("HSET heavy:job:1 callback_secret tenant-secret\n")
        (path / "redis" / "appendonly.aof").chmod(0o644)
        yield path
    finally:
        shutil.rmtree(path)


@pytest.mark.parametrize("isolation", [i for i in ISOLATIONS if i != "process"])
def test_the_data_directory_is_hidden_from_the_code(data_dir, isolation):
    """HEAVY_HOME holds the embedded Redis's files (other tenants' questions, reports, callback secrets): hidden like
    the home directory, wherever it is."""
    sandbox = PythonSandbox(LIMITS, isolation, data_dirs=(str(data_dir),))
    if sandbox.isolation == "process":
        pytest.skip("no namespaces here: process isolation hides no directory")
    # empty, or (under the private /tmp) not there at all; before, a HEAVY_HOME under /tmp broke every run
    code = (f"import os\np = {str(data_dir)!r}\n"
            "try:\n    print(sorted(os.listdir(p)) if os.path.isdir(p) else [])\n"
            "except OSError as error:\n    print('unlistable', error.errno)\n"
            f"try:\n    print(open({str(data_dir / 'redis' / 'appendonly.aof')!r}).read())\n"
            "except OSError as error:\n    print('unreadable', error.errno)")
    outcome = asyncio.run(sandbox.run(code))
    # the runner's Landlock also refuses listing what the tmpfs covers (EACCES), where the kernel has it
    assert outcome.output in ("[]\nunreadable 2\n", "unlistable 13\nunreadable 2\n"), outcome.output
    assert outcome.exit_code == 0
    # the mounts alone hide it (a kernel without Landlock)
    uid = SANDBOX_UIDS[0] if sandbox.isolation == "namespaces" else None
    hidden = run_without_audit_hook(code, uid, (str(data_dir),))
    assert hidden.stdout.startswith("[]\nunreadable 2"), hidden.stdout + hidden.stderr
    assert PythonSandbox(LIMITS, "process").data_dirs == (os.path.expanduser(get_settings().home),)


def test_file_size_limit_is_enforced():
    outcome = run("open('big.bin', 'wb').write(b'x' * (4 << 20))")
    assert outcome.exit_code == 1 and "File too large" in outcome.output


def test_output_is_capped_with_a_note():
    outcome = run("print('y' * 100000)")
    assert outcome.truncated and len(outcome.output) == 4000 and outcome.output_bytes == 100001
    text = asyncio.run(PythonTool(PythonSandbox(LIMITS)).run({"code": "print('y' * 100000)"},
                                                             ToolContext("j", 0, frozenset({"python"})))).text
    assert text.endswith("[output truncated: showing 4000 of 100001 bytes]")


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_environment_secrets_do_not_reach_the_code(monkeypatch, isolation):
    monkeypatch.setenv("HEAVY_TEST_SECRET", "s3cret")  # os.environ: this process's /proc environ shows it too
    assert "s3cret" not in run("import os\nprint(dict(os.environ))", isolation=isolation).output
    # a process started with a secret in its environment, as a worker is (/proc/<pid>/environ shows the environment
    # a process started with, not what os.environ set since)
    holder = subprocess.Popen(["sleep", "60"], env={"HEAVY_TEST_SECRET": "s3cret"})
    snoop = (  # every process's environment through /proc, the parent's and the holder's by number
        "import os\n"
        f"found, pids = [], [os.getppid(), {holder.pid}]\n"
        "try:\n"
        "    pids += [p for p in os.listdir('/proc') if p.isdigit()]\n"
        "except OSError as exc:\n"
        "    print('refused', type(exc).__name__)\n"
        "for pid in pids:\n"
        "    try:\n"
        "        found.append(open(f'/proc/{pid}/environ', 'rb').read())\n"
        "    except OSError as exc:\n"
        "        print('refused', type(exc).__name__)\n"
        "print('SECRET' if any(b's3cret' in e for e in found) else 'clean')\n"
    )
    try:
        outcome = run(snoop, isolation=isolation)
    finally:
        holder.kill()
        holder.wait()
    assert outcome.output.endswith("clean\n") and "refused PermissionError" in outcome.output, outcome.output


def test_process_isolation_makes_this_process_undumpable():
    """Without namespaces the code runs as our own user: /proc/<our pid>/environ must not be readable to it."""
    program = ("import ctypes\nfrom heavy.tools.python_sandbox import PythonSandbox\n"
               "libc = ctypes.CDLL(None)\nbefore = libc.prctl(3, 0, 0, 0, 0)\n"  # PR_GET_DUMPABLE
               "PythonSandbox(isolation='process')\nprint(before, libc.prctl(3, 0, 0, 0, 0))")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["1", "0"], result.stdout + result.stderr


def test_python_tool_through_the_executor():
    executor = ToolExecutor([PythonTool(PythonSandbox(LIMITS))])
    context = ToolContext("job", 0, frozenset({"python"}))
    ok = asyncio.run(executor.call("python", {"code": "sum(range(10))"}, context))
    assert (ok.text, ok.error) == ("45", None)
    bad = asyncio.run(executor.call("python", {"code": "1/0"}, context))
    assert "ZeroDivisionError" in bad.text and bad.error == "[exit code 1]"


@needs_namespaces
def test_executor_timeout_kills_the_sandboxed_process():
    executor = ToolExecutor([PythonTool(PythonSandbox(SandboxLimits(wall_s=60)))], ToolLimits(timeout_s=1))
    context = ToolContext("j", 0, frozenset({"python"}))
    result = asyncio.run(executor.call("python", {"code": "import time\ntime.sleep(60)"}, context))
    assert "timed out" in result.error
    assert wait_until_no_sandbox_process(), "a sandboxed process outlived its cancelled call"


def wait_until_no_sandbox_process(attempts=50):
    """The kernel tears a PID namespace down just after its init dies: poll briefly rather than race it."""
    for _ in range(attempts):
        owners = subprocess.run(["ps", "-eo", "uid="], capture_output=True, text=True, check=True).stdout.split()
        if not any(int(uid) in SANDBOX_UIDS for uid in owners):
            return True
        time.sleep(0.1)
    return False


def test_process_isolation_bounds_what_the_scratch_dir_holds():
    # its scratch dir is on the host's /tmp: 16 MB a file (file_bytes) but any number of them, until the wall limit
    fill = ("import os, time\nprint(os.getcwd(), flush=True)\nos.mkdir('hidden')\n"
            "for k in range(24):\n    open(f'hidden/{k}', 'wb').write(b'x' * (1 << 20))\n"
            "os.chmod('hidden', 0)\ntime.sleep(60)")
    sandbox = PythonSandbox(SandboxLimits(wall_s=10, file_bytes=1 << 20, tmpfs_bytes=8 << 20), "process")
    outcome = asyncio.run(sandbox.run(fill))
    assert outcome.scratch_full and not outcome.timed_out, outcome
    assert "scratch directory's limit" in render_outcome(outcome, wall_s=10)
    assert not Path(outcome.output.split()[0]).exists()  # removed, with the dir the code made unreadable


def test_process_isolation_lets_code_use_its_scratch_dir_within_the_bound():
    code = "open('a.bin', 'wb').write(b'x' * (1 << 20))\nimport os\nos.path.getsize('a.bin')"
    outcome = run(code, SandboxLimits(wall_s=10, file_bytes=2 << 20, tmpfs_bytes=8 << 20), "process")
    assert outcome.output.strip() == "1048576" and not outcome.scratch_full, outcome
