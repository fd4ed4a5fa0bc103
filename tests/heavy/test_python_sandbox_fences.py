"""python sandbox: what holds once the code is past the runner's audit hook.

An audit hook runs in the interpreter the code runs in, so the code can reach it: a refused event's traceback holds
the hook's frame, and the frame its globals (the tables of what to refuse; `import __main__` reaches them too, and
the modules it calls, os.path.realpath, can be replaced). These tests disarm the hook through its frame, then check
the kernel's fences: no socket of any kind, no new process or program, no read of what Python does not need, no
write outside the scratch dir, no signal to the worker.
"""

import asyncio
import ctypes
import os
import pwd
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

from heavy.tools.python_sandbox import (
    SANDBOX_UIDS,
    PythonSandbox,
    SandboxLimits,
    user_namespaces_available,
)
from tests.heavy.test_python_sandbox import needs_namespaces, needs_user_namespaces, run_without_audit_hook

ISOLATIONS = ["auto", *(["user-namespaces"] if user_namespaces_available() else []), "process"]
LIMITS = SandboxLimits(wall_s=15, cpu_s=5, memory_bytes=512 << 20, output_bytes=4000)
LANDLOCK_CREATE_RULESET, LANDLOCK_CREATE_RULESET_VERSION = 444, 1


def landlock_abi() -> int:
    return ctypes.CDLL(None).syscall(LANDLOCK_CREATE_RULESET, None, 0, LANDLOCK_CREATE_RULESET_VERSION)


needs_landlock = pytest.mark.skipif(landlock_abi() < 6, reason="needs Landlock with signal scoping (Linux 6.12)")
needs_landlock_reads = pytest.mark.skipif(landlock_abi() < 1, reason="needs Landlock (Linux 5.13)")

DISARM_THE_AUDIT_HOOK = """
import os, re
try:
    open("/proc/1/environ", "rb")
except PermissionError as error:
    tb = error.__traceback__
    while tb.tb_next:
        tb = tb.tb_next
    runner = tb.tb_frame.f_globals  # the hook's frame: the runner's globals
for table in ("REFUSED_EVENTS", "PATH_EVENTS", "SIGNAL_EVENTS"):
    runner.get(table, {}).clear()
runner.update(REFUSED_MODULES=frozenset(), WRITE_FLAGS=0, PROC_ENTRY=re.compile("(?!)"))
del runner["sys"].modules["_posixsubprocess"]  # the runner's has fork_exec refused: imported anew, it is whole again
"""


def run(code, isolation):
    return asyncio.run(PythonSandbox(LIMITS, isolation).run(code))


@pytest.fixture
def signals_received():
    received = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: received.append(signal.SIGUSR1))
    yield received
    signal.signal(signal.SIGUSR1, previous)


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_the_worker_cannot_be_signalled(isolation, signals_received):
    """Run as the worker's own user (process isolation), os.kill(os.getppid(), SIGKILL) ended the worker."""
    outcome = run("import os, signal\nos.kill(os.getppid(), signal.SIGUSR1)\nprint('SIGNALLED')", isolation)
    assert "signalling other processes is not allowed" in outcome.output and "SIGNALLED" not in outcome.output
    assert run("import os, signal\nos.kill(os.getpid(), 0)\nos.killpg(0, 0)\nprint('ok')", isolation).output == "ok\n"
    assert signals_received == []


def test_the_audit_hook_cannot_be_swapped_for_a_no_op():
    code = (
        "import gc\n"
        "hook = next(o for o in gc.get_objects() if getattr(o, '__qualname__', '') == 'install_guard.<locals>.hook')\n"
        "names = hook.__code__.co_freevars\n"
        "source = ('def outer():\\n' + ''.join(f'    {n} = None\\n' for n in names) + '    def hook(event, args):\\n'\n"
        "          + ''.join(f'        {n}\\n' for n in names) + '    return hook\\n')\n"
        "scope = {}\n"
        "exec(source, scope)\n"
        "hook.__code__ = scope['outer']().__code__\n"
        "import socket\n"
        "socket.socket()\n"
        "print('SOCKET')\n"
    )
    outcome = run(code, "process")
    assert "replacing the sandbox's code is not allowed" in outcome.output and "SOCKET" not in outcome.output


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_no_socket_of_any_kind_past_the_audit_hook(isolation):
    """No network namespace hides a unix socket on a path (Ray's, a Redis's): no socket can be made at all."""
    code = DISARM_THE_AUDIT_HOOK + (
        "import socket\n"
        "for family in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK):\n"
        "    try:\n"
        "        socket.socket(family, socket.SOCK_DGRAM if family == socket.AF_NETLINK else socket.SOCK_STREAM)\n"
        "        print('SOCKET', family)\n"
        "    except OSError as exc:\n"
        "        print('refused', exc.errno)\n"
    )
    assert run(code, isolation).output == "refused 1\n" * 4


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_no_new_process_or_program_past_the_audit_hook(isolation):
    """Only the hook refused them: past it, a fork bomb as the worker's user (process isolation; root's RLIMIT_NPROC
    never binds) or a setsid child outliving the run's process group. Threads still start."""
    code = DISARM_THE_AUDIT_HOOK + (
        "import subprocess, threading\n"
        "def fork():\n"
        "    if os.fork() == 0:\n"
        "        os._exit(0)\n"
        "for act in (fork, lambda: os.execv('/bin/true', ['true']),\n"
        "            lambda: os.posix_spawn('/bin/true', ['true'], {}),\n"
        "            lambda: subprocess.run(['true'])):\n"
        "    try:\n"
        "        act()\n"
        "        print('STARTED')\n"
        "    except OSError as exc:\n"
        "        print('refused', exc.errno)\n"
        "thread = threading.Thread(target=print, args=('thread',))\n"
        "thread.start()\n"
        "thread.join()\n"
    )
    assert run(code, isolation).output == "refused 1\n" * 4 + "thread\n"


@needs_landlock
def test_process_isolation_keeps_writes_and_signals_in_the_sandbox_past_the_audit_hook(tmp_path, signals_received):
    """Without namespaces the code runs as the worker's user: Landlock keeps its writes in the scratch dir and its
    signals to itself however the audit hook is disarmed."""
    tmp_path.chmod(0o777)
    code = DISARM_THE_AUDIT_HOOK + (
        "import signal\n"
        "open('inside.txt', 'w').write('ok')\n"
        f"escape = lambda: open({str(tmp_path / 'escape.txt')!r}, 'w')\n"
        "pidfd_signal = lambda: signal.pidfd_send_signal(os.pidfd_open(os.getppid()), signal.SIGUSR1)\n"  # unaudited
        "for act in (escape, lambda: os.kill(os.getppid(), signal.SIGUSR1), pidfd_signal):\n"
        "    try:\n"
        "        act()\n"
        "        print('ESCAPED')\n"
        "    except OSError as exc:\n"
        "        print('refused', exc.errno)\n"
    )
    outcome = run(code, "process")
    assert outcome.output == "refused 13\nrefused 1\nrefused 1\n", outcome.output
    assert list(tmp_path.iterdir()) == [] and signals_received == []


@pytest.fixture
def data_dir():
    """A HEAVY_HOME outside home and /tmp (as the image's /var/lib/heavy) holding the embedded Redis's append-only
    file: every tenant's jobs, world-readable as redis-server writes it."""
    path = Path(tempfile.mkdtemp(prefix=".sandbox-data-", dir=Path(__file__).parent))
    try:
        (path / "appendonly.aof").write_text("HSET heavy:job:1 callback_secret tenant-secret\n")
        yield path
    finally:
        shutil.rmtree(path)


@needs_landlock
def test_process_isolation_hides_the_data_dir_home_and_shared_temp_dirs(data_dir):
    """Namespaces cover these dirs with a tmpfs; without them Landlock keeps the code from reading them (the audit
    hook never refused reads)."""
    code = (
        "import os\n"
        "open('scratch.txt', 'w').write('mine')\n"
        "print(open('scratch.txt').read())\n"
        f"secrets = lambda: open({str(data_dir / 'appendonly.aof')!r}).read()\n"
        f"for act in (secrets, lambda: os.listdir({pwd.getpwuid(os.getuid()).pw_dir!r}), lambda: os.listdir('/tmp')):\n"
        "    try:\n"
        "        print('READ', act())\n"
        "    except OSError as exc:\n"
        "        print('refused', exc.errno)\n"
    )
    sandbox = PythonSandbox(LIMITS, "process", data_dirs=(str(data_dir),))
    assert asyncio.run(sandbox.run(code)).output == "mine\n" + "refused 13\n" * 3


@pytest.fixture
def host_file():
    """A world-readable file the namespaces do not hide (outside home, HEAVY_HOME and the temp dirs), as another
    user's files or an application's config are."""
    path = Path(tempfile.mkdtemp(prefix=".sandbox-host-", dir=Path(__file__).parent))
    try:
        path.chmod(0o755)
        (path / "config.ini").write_text("password = host-secret\n")
        (path / "config.ini").chmod(0o644)
        yield path / "config.ini"
    finally:
        shutil.rmtree(path)


@needs_landlock_reads
@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_reads_stay_within_what_python_needs_past_the_audit_hook(host_file, isolation):
    """Namespaces hid only home, HEAVY_HOME, secrets and the temp dirs: the code read any world-readable file else
    (/etc/passwd, other users' files, its parent's /proc). Landlock now lets it read only what Python needs."""
    code = DISARM_THE_AUDIT_HOOK + (
        "import mimetypes, zoneinfo\n"
        f"for path in ({str(host_file)!r}, '/etc/passwd', f'/proc/{{os.getppid()}}/status'):\n"
        "    try:\n"
        "        print('READ', open(path).read()[:40])\n"
        "    except OSError as exc:\n"
        "        print('refused', exc.errno)\n"
        "open('scratch.txt', 'w').write('mine')\n"
        "print(open('scratch.txt').read(), zoneinfo.ZoneInfo('Europe/Paris'), mimetypes.guess_type('a.html')[0])\n"
    )
    outcome = asyncio.run(PythonSandbox(LIMITS, isolation).run(code))
    # the namespace modes' root holds neither file (see the next test); the parent there is the sandbox's shell
    host_refusals = "refused 13\n" * 2 if outcome.isolation == "process" else "refused 2\n" * 2
    assert outcome.output == host_refusals + "refused 13\n" + "mine Europe/Paris text/html\n"


@pytest.mark.parametrize("uid", [
    pytest.param(SANDBOX_UIDS[0], id="namespaces", marks=needs_namespaces),
    pytest.param(None, id="user-namespaces", marks=needs_user_namespaces),
])
def test_without_landlock_the_namespaces_show_only_what_python_needs(host_file, uid):
    """A kernel without Landlock (before 5.13, or disabled) left the namespace modes only their mounts, which hid
    home, HEAVY_HOME, secrets and the temp dirs: the code read /etc/passwd, any world-readable file else, and in
    user-namespaces what our uid may (/etc/shadow, as root). Its root now holds only what Python needs. A plain
    interpreter in the sandbox's namespaces: no runner, so no Landlock."""
    code = (
        "import json, mimetypes, zoneinfo\n"
        f"for path in ({str(host_file)!r}, '/etc/passwd', '/etc/shadow', '/proc/{os.getpid()}/status'):\n"
        "    try:\n"
        "        print('READ', open(path).read()[:40])\n"
        "    except OSError as exc:\n"
        "        print('refused', exc.errno)\n"
        "print(zoneinfo.ZoneInfo('Europe/Paris'), mimetypes.guess_type('a.html')[0], json.dumps([1]))\n"
    )
    result = run_without_audit_hook(code, uid)
    assert result.stdout == "refused 2\n" * 4 + "Europe/Paris text/html [1]\n", result.stdout + result.stderr
