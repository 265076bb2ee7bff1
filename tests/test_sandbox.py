"""Tests for support/sandbox.py: a table of hostile programs, each contained while its targets (the
test process, pid 1, another process, a listening port, a file outside, a secret in a fake HOME) are
unharmed, and the ordinary programs program-of-thought needs still run.

Each attack is written so that it prints ESCAPED if it went through and BLOCKED (with the error)
if it was refused; signals to the test process and to pid 1 are sent as signal 0, the kernel's
permission check of every signal, so that an escape fails the test without killing the machine.
The rows run a few at a time (threads, each waiting on its program) with short timeouts.

    pytest -q tests/test_sandbox.py
"""

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from string import Template

import pytest

from support.sandbox import SandboxError, run_program, run_programs, sandbox_layers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "s3cr3t-6d1c0ffee"
TIMEOUT = 4.0
MAX_OUTPUT = 2000

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.machine() not in ("x86_64", "aarch64"),
    reason="the sandbox's seccomp and Landlock layers are Linux x86-64 / arm64",
)

# Raw system call numbers (x86-64, arm64) for the attacks Python has no function for.
RAW = {"io_uring_setup": (425, 425), "kcmp": (312, 272), "keyctl": (250, 219), "bpf": (321, 280),
       "perf_event_open": (298, 241), "userfaultfd": (323, 282), "rt_sigqueueinfo": (129, 138),
       "tgkill": (234, 131), "process_vm_readv": (310, 270)}
NR = {name: numbers[platform.machine() == "aarch64"] for name, numbers in RAW.items()}

PRELUDE = f"""import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
NR = {NR!r}
def call(result):
    if result == -1:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return result
"""


def attempt(body):
    """A program that prints ESCAPED if `body` runs through, BLOCKED and the error if it raises."""
    return (PRELUDE + "try:\n" + textwrap.indent(textwrap.dedent(body).strip("\n"), "    ")
            + "\n    print('ESCAPED')\nexcept BaseException as e:\n    print('BLOCKED', type(e).__name__, e)\n")


# (name, program, what must hold). ${port}, ${victim}, ${home}, ${outside}, ${repo} are filled in.
ROWS = [
    # ---- the network
    ("TCP to 127.0.0.1 by socket()", attempt("import socket\nsocket.create_connection(('127.0.0.1', ${port}), timeout=1)"), "blocked"),
    ("TCP to the internet", attempt("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)"), "blocked"),
    ("UDP datagram to 127.0.0.1", attempt("import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', ${port}))"), "blocked"),
    ("raw packet socket", attempt("import socket\nsocket.socket(socket.AF_PACKET, socket.SOCK_RAW)"), "blocked"),
    ("unix socket", attempt("import socket\nsocket.socket(socket.AF_UNIX).connect('/run/dbus/system_bus_socket')"), "blocked"),
    ("socketpair", attempt("import socket\nsocket.socketpair()"), "blocked"),
    ("io_uring (IORING_OP_SOCKET + CONNECT need a ring)", attempt("call(libc.syscall(NR['io_uring_setup'], 8, ctypes.create_string_buffer(120)))"), "blocked"),
    # ---- other processes
    ("signal the parent (signal 0)", attempt("os.kill(os.getppid(), 0)"), "blocked"),
    ("signal pid 1 (signal 0)", attempt("os.kill(1, 0)"), "blocked"),
    ("signal every process: kill(-1)", attempt("os.kill(-1, 0)"), "blocked"),
    ("SIGKILL another process of ours", attempt("os.kill(${victim}, 9)"), "blocked"),
    ("tgkill the parent", attempt("call(libc.syscall(NR['tgkill'], os.getppid(), os.getppid(), 0))"), "blocked"),
    ("rt_sigqueueinfo to the parent", attempt("call(libc.syscall(NR['rt_sigqueueinfo'], os.getppid(), 0, ctypes.create_string_buffer(128)))"), "blocked"),
    ("pidfd_open the parent", attempt("os.pidfd_open(os.getppid())"), "blocked"),
    ("ptrace attach to the parent", attempt("call(libc.ptrace(16, os.getppid(), 0, 0))"), "blocked"),
    ("read the parent's memory", attempt("buf = ctypes.create_string_buffer(8)\nlocal = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 8)\nremote = (ctypes.c_void_p * 2)(0x400000, 8)\ncall(libc.syscall(NR['process_vm_readv'], os.getppid(), local, 1, remote, 1, 0))"), "blocked"),
    ("kcmp the parent's files", attempt("call(libc.syscall(NR['kcmp'], os.getppid(), os.getpid(), 0, 0, 0))"), "blocked"),
    ("renice the parent", attempt("os.setpriority(os.PRIO_PROCESS, os.getppid(), 19)"), "blocked"),
    ("pin the parent to one CPU", attempt("os.sched_setaffinity(os.getppid(), {0})"), "blocked"),
    ("read or change the parent's rlimits", attempt("import resource\nresource.prlimit(os.getppid(), resource.RLIMIT_NOFILE)"), "blocked"),
    # ---- secrets
    ("/proc/<parent>/environ", attempt("print(open('/proc/%d/environ' % os.getppid(), 'rb').read())"), "blocked"),
    ("symlink to /proc/<parent>/environ", attempt("os.symlink('/proc/%d/environ' % os.getppid(), 'env')\nprint(open('env', 'rb').read())"), "blocked"),
    ("list /proc", attempt("print(os.listdir('/proc'))"), "blocked"),
    ("~/.ssh key in a fake HOME", attempt("print(open('${home}/.ssh/id_rsa').read())"), "blocked"),
    ("list /root", attempt("print(os.listdir('/root/'))"), "blocked"),
    ("the repository (gold answers)", attempt("print(open('${repo}/README.md').read()[:100])"), "blocked"),
    ("secrets in the environment", "import os\nprint('ESCAPED' if '" + SECRET + "' in str(os.environ) else 'BLOCKED', sorted(os.environ))", "blocked"),
    # ---- the file system
    ("write a file outside the work dir", attempt("open('${outside}', 'a').write('ESCAPED')"), "blocked"),
    ("write in /dev/shm", attempt("open('/dev/shm/escaped', 'w').write('x')"), "blocked"),
    ("write in the parent folder", attempt("os.chdir('..')\nopen('escaped', 'w').write('x')"), "blocked"),
    ("symlink out, write through it", attempt("os.symlink('${outside}', 'link')\nopen('link', 'a').write('ESCAPED')"), "blocked"),
    ("hard link to an outside file", attempt("os.link('${outside}', 'hard')\nopen('hard', 'a').write('ESCAPED')"), "blocked"),
    ("rename an outside file", attempt("os.rename('${outside}', '${outside}.moved')"), "blocked"),
    ("make a block device", attempt("import stat\nos.mknod('disk', 0o600 | stat.S_IFBLK, os.makedev(8, 0))"), "blocked"),
    # ---- privileges, namespaces, the kernel
    ("setuid(0)", attempt("os.setuid(0)"), "blocked"),
    ("chroot", attempt("os.chroot('.')"), "blocked"),
    ("mount a tmpfs", attempt("call(libc.mount(b'tmpfs', b'.', b'tmpfs', 0, None))"), "blocked"),
    ("unshare a user namespace", attempt("call(libc.unshare(0x10000000))"), "blocked"),
    ("keyctl (kernel keyrings)", attempt("call(libc.syscall(NR['keyctl'], 0, -3, 0))"), "blocked"),
    ("bpf", attempt("call(libc.syscall(NR['bpf'], 0, ctypes.create_string_buffer(128), 128))"), "blocked"),
    ("perf_event_open", attempt("call(libc.syscall(NR['perf_event_open'], ctypes.create_string_buffer(128), 0, -1, -1, 0))"), "blocked"),
    ("userfaultfd", attempt("call(libc.syscall(NR['userfaultfd'], 0))"), "blocked"),
    # ---- new processes
    ("exec /bin/sh", attempt("os.execv('/bin/sh', ['sh', '-c', 'echo ESCAPED'])"), "blocked"),
    ("subprocess", attempt("import subprocess\nsubprocess.run(['id'])"), "blocked"),
    ("fork bomb (bounded)", attempt("for _ in range(200):\n    if os.fork() == 0:\n        import time\n        time.sleep(30)\n        os._exit(0)"), "blocked"),
    ("thread bomb", attempt("import threading, time\nfor _ in range(200):\n    threading.Thread(target=time.sleep, args=(30,)).start()"), "blocked"),
    # ---- resources
    ("10 GB at once", attempt("x = bytearray(10 * 1024 ** 3)"), "blocked"),
    ("memory grows until refused", attempt("x = []\nwhile True:\n    x.append(bytearray(10 ** 7))"), "blocked"),
    ("CPU busy loop", "while True:\n    pass\nprint('ESCAPED')", "timed out"),
    ("sleep past the timeout", "import time\ntime.sleep(60)\nprint('ESCAPED')", "timed out"),
    ("a huge integer power", "x = 10 ** 10 ** 9\nprint('ESCAPED')", "stopped"),
    ("deep recursion crash", "import sys\nsys.setrecursionlimit(10 ** 6)\nf = lambda n: f(n + 1)\nf(0)\nprint('ESCAPED')", "stopped"),
    ("a huge file", attempt("import signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\nwith open('big', 'wb') as f:\n    for _ in range(1000):\n        f.write(bytes(10 ** 6))"), "blocked"),
    ("files until the disk is full", attempt("for i in range(10 ** 5):\n    open(f'f{i}', 'wb').write(bytes(10 ** 6))"), "blocked or timed out"),
    ("a million empty files", attempt("for i in range(10 ** 6):\n    open(f'e{i}', 'w').close()"), "blocked or timed out"),
    ("file descriptors until refused", attempt("fds = [open('/dev/null') for _ in range(10 ** 5)]"), "blocked"),
    # ---- output floods and odd bytes
    ("1 GB to stdout", "import sys\nfor _ in range(1024):\n    sys.stdout.write('x' * 2 ** 20)", "flood"),
    ("1 GB to stderr", "import sys\nfor _ in range(1024):\n    sys.stderr.write('x' * 2 ** 20)", "flood"),
    ("1 GB to stdout, SIGXFSZ ignored", "import signal, sys\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\nfor _ in range(1024):\n    sys.stdout.write('x' * 2 ** 20)", "flood"),
    ("a long log, then the answer", "for i in range(5000):\n    print('step', i)\nprint(42)", "tail kept"),
    ("a faked setup failure", "import sys\nprint('sandbox setup failed: gotcha')\nsys.exit(121)", "stopped"),
    ("invalid UTF-8 on stdout", "import sys\nsys.stdout.buffer.write(b'ok \\xff\\xfe \\xc3')", "ok"),
    ("a lone surrogate printed", "print('ok \\udc80')", "ok"),
    ("a lone surrogate in the source", "print('ok \ud800')", "ok"),
    ("invalid UTF-8 in the source", b"print('ok')\n# \xff\xfe\xc3", "ok"),
    # ---- what programs may do
    ("arithmetic", "print(6 * 7)", "ok"),
    ("sympy and numpy", "import numpy, sympy\nprint('ok', sympy.Rational(3, 4) + 1, numpy.arange(4).sum())", "ok"),
    ("files in the work dir", "open('notes.txt', 'w').write('ok')\nprint(open('notes.txt').read())", "ok"),
    ("a signal to itself", "import os, signal\nsignal.signal(signal.SIGUSR1, lambda *a: print('ok'))\nos.kill(os.getpid(), signal.SIGUSR1)", "ok"),
]

HOLDS = {
    "blocked": lambda r: "BLOCKED" in r.output,
    "timed out": lambda r: r.timed_out,
    "blocked or timed out": lambda r: "BLOCKED" in r.output or r.timed_out,
    "stopped": lambda r: not r.ok,
    "flood": lambda r: not r.ok and len(r.output) <= MAX_OUTPUT + 30,
    "tail kept": lambda r: r.ok and r.output.startswith("[... output truncated]\n") and r.output.endswith("4999\n42\n"),
    "ok": lambda r: r.ok and (r.output.startswith("ok") or r.output == "42\n"),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Run every row once, against targets set up here; the tests then read the results."""
    if not {"landlock", "seccomp"} <= set(sandbox_layers()):
        pytest.skip(f"this machine's sandbox has {sandbox_layers()}: the table assumes Landlock and seccomp")
    base = tmp_path_factory.mktemp("sandbox")
    home = base / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text(SECRET)
    outside = base / "outside.txt"
    outside.write_text("original")
    os.chmod(base, 0o777)
    os.chmod(outside, 0o666)  # world-writable: only the sandbox stands between it and the program
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    victim = subprocess.Popen(["sleep", "120"])
    saved = {key: os.environ.get(key) for key in ("HOME", "SANDBOX_TEST_TOKEN")}
    os.environ.update(HOME=str(home), SANDBOX_TEST_TOKEN=SECRET)
    values = {"port": listener.getsockname()[1], "victim": victim.pid, "home": home, "outside": outside, "repo": ROOT}
    codes = [code if isinstance(code, bytes) else Template(code).substitute(values) for _, code, _ in ROWS]
    leftovers = set(os.listdir("/tmp"))
    start = time.monotonic()
    try:
        results = run_programs(codes, n_workers=4, timeout=TIMEOUT, memory_mb=512, max_output_chars=MAX_OUTPUT)
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.update({key: value})
    yield {"results": dict(zip([name for name, _, _ in ROWS], results)), "seconds": time.monotonic() - start,
           "victim": victim, "listener": listener, "outside": outside,
           "new_in_tmp": {n for n in set(os.listdir("/tmp")) - leftovers if n.startswith("sandbox-")}}
    victim.kill()
    victim.wait()
    listener.close()


def test_the_table_covers_enough():
    assert len(ROWS) >= 40 and len({name for name, _, _ in ROWS}) == len(ROWS)
    assert {holds for _, _, holds in ROWS} <= set(HOLDS)


@pytest.mark.parametrize("name,holds", [(name, holds) for name, _, holds in ROWS], ids=[name for name, _, _ in ROWS])
def test_hostile_program_is_contained(world, name, holds):
    result = world["results"][name]
    assert HOLDS[holds](result), result
    assert "ESCAPED" not in result.output and SECRET not in result.output, result
    assert world["victim"].poll() is None, "another process of ours was killed"
    with pytest.raises(BlockingIOError):
        world["listener"].accept()  # nobody connected to our port
    assert world["outside"].read_text() == "original"
    os.kill(1, 0)  # pid 1 is there


def test_the_whole_table_runs_quickly_and_leaves_nothing_behind(world):
    assert world["seconds"] < 45
    assert world["new_in_tmp"] == set()


def test_a_setup_failure_is_a_sandbox_error(monkeypatch):
    monkeypatch.setattr("support.sandbox._landlock_abi", lambda: 99)  # a ruleset the kernel will refuse
    monkeypatch.setattr("support.sandbox._readable_roots", lambda hidden: ["/nonexistent-folder"])
    with pytest.raises(SandboxError, match="sandbox setup failed"):
        run_program("print(1)")


UNPRIVILEGED = """
import json, os, subprocess, sys
sys.path.insert(0, {root!r})
from support.sandbox import run_programs, sandbox_layers
victim = subprocess.Popen(["sleep", "60"])
programs = ["import os\\nos.kill({{}}, 9)".format(victim.pid), "import os\\nos.kill(os.getppid(), 0)",
            "import socket\\nsocket.create_connection(('1.1.1.1', 53), timeout=1)",
            "import os\\nos.fork()", "open('/var/tmp/escaped-sandbox-test', 'w')", "print(6 * 7)"]
results = run_programs(programs, timeout=5)
print(json.dumps({{"layers": sandbox_layers(), "ok": [r.ok for r in results], "victim": victim.poll()}}))
victim.kill()
"""


def test_an_unprivileged_user_gets_the_same_protections():
    """As root the tests run the programs as nobody; this runs the sandbox from nobody itself
    (with a Python nobody can read), which takes the user-namespace path."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if os.getuid() != 0 or python is None:
        pytest.skip("needs root (to become nobody) and a system python3")
    run = subprocess.run([python, "-c", UNPRIVILEGED.format(root=ROOT)], user=65534, group=65534, extra_groups=[],
                         cwd="/", env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert {"landlock", "seccomp"} <= set(report["layers"]) and "nobody" not in report["layers"]
    assert report["ok"] == [False, False, False, False, False, True] and report["victim"] is None
    assert not os.path.exists("/var/tmp/escaped-sandbox-test")
