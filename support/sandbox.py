"""Sandboxed execution of model-written Python programs (program-of-thought, tool-integrated).

DeepSeekMath evaluates program-of-thought and tool-integrated solutions (paper section 3.2,
tables 4-5) by running the Python a model wrote; RL with such formats runs it for every
rollout. This file holds only that: `run_program` (one program), `run_programs` (many, in
parallel), `sandbox_layers` (which protections this machine gives). It does not decide whether
an answer is right (grading.py, evaluate.py) nor which code block of a response runs
(evaluate.py).

Each program runs in a fresh interpreter (`python -I`) that locks itself down, layer by layer,
before it runs the program; each layer is there because the others can be missing:
  1. namespaces (Linux; root, or a user namespace when the kernel lends one to us): a network
     namespace with no interface but a down loopback, so no connection leaves the program even
     through an interface seccomp does not see; a mount namespace in which /root, /home, $HOME,
     the repository, our current directory, /var/tmp and /dev/shm are empty, read-only tmpfs
     (the Python installation is mounted back), and /tmp is a small tmpfs of its own that holds
     the working directory: the disk it can fill is bounded in bytes and files;
  2. as root, the program runs as nobody (65534): DAC then keeps it from root's files and
     processes. Only with the mount namespace, which keeps the Python installation readable;
  3. rlimits: address space, CPU seconds, file size (which also bounds its output, captured in a
     file), open files, no core dumps, no new processes;
  4. Landlock (kernel >= 5.13): it writes only in its working directory (and /dev/null), reads
     only outside the hidden folders of 1 and /proc, and executes nothing;
  5. seccomp (x86-64, arm64): every system call that reaches outside the process fails with
     EPERM: new processes and threads, exec, sockets and io_uring, ptrace and reading other
     processes' memory, signals and scheduler or rlimit changes aimed at any pid but its own,
     namespaces, mounts, uid changes, kernel keys, BPF, modules. 32-bit system calls (int 0x80,
     x32, AArch32: where socketcall lives) kill it;
  6. an empty environment and a wall-clock timeout, after which its process group is killed.

What it does not contain: it reads every file outside the hidden folders that its user may
read (as nobody: world-readable files such as /etc and data sets elsewhere on disk); it uses CPU
and memory up to the limits and its working directory up to the tmpfs size; without namespaces
(non-root and no user namespaces) the disk is bounded per file only, and without Landlock
(older kernels) it writes wherever its user may; without seccomp (other architectures) a root
user has no fork limit and the network is open. `sandbox_layers()` says what this machine has.
Use a VM for code you have reason to distrust more than a model's arithmetic.

Tests (hostile programs, one row each): pytest -q tests/test_sandbox.py
"""

import contextlib
import functools
import inspect
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

# System call numbers: name -> (x86-64, arm64); None where the architecture has no such call.
DENIED_SYSCALLS = {
    # new processes, threads and programs
    "fork": (57, None), "vfork": (58, None), "clone": (56, 220), "clone3": (435, 435),
    "execve": (59, 221), "execveat": (322, 281),
    # the network: every socket, and io_uring, which opens and connects sockets without socket()
    "socket": (41, 198), "socketpair": (53, 199),
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
    # other processes: tracing, their memory and file descriptors, pidfds, their scheduling
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271), "kcmp": (312, 272),
    "pidfd_open": (434, 434), "pidfd_send_signal": (424, 424), "pidfd_getfd": (438, 438),
    "process_madvise": (440, 440), "move_pages": (279, 239), "migrate_pages": (256, 238),
    "setpriority": (141, 140), "ioprio_set": (251, 30),
    # namespaces, mounts, the root directory
    "unshare": (272, 97), "setns": (308, 268), "mount": (165, 40), "umount2": (166, 39),
    "pivot_root": (155, 41), "chroot": (161, 51), "open_tree": (428, 428), "move_mount": (429, 429),
    "fsopen": (430, 430), "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433),
    "mount_setattr": (442, 442),
    # identity and privileges
    "setuid": (105, 146), "setgid": (106, 144), "setreuid": (113, 145), "setregid": (114, 143),
    "setresuid": (117, 147), "setresgid": (119, 149), "setfsuid": (122, 151), "setfsgid": (123, 152),
    "setgroups": (116, 159), "capset": (126, 91), "personality": (135, 92),
    # the kernel and the machine
    "bpf": (321, 280), "perf_event_open": (298, 241), "userfaultfd": (323, 282),
    "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218),
    "init_module": (175, 105), "finit_module": (313, 273), "delete_module": (176, 106),
    "kexec_load": (246, 104), "kexec_file_load": (320, 294), "reboot": (169, 142),
    "swapon": (167, 224), "swapoff": (168, 225), "acct": (163, 89), "quotactl": (179, 60),
    "syslog": (103, 116), "open_by_handle_at": (304, 265), "name_to_handle_at": (303, 264),
    "settimeofday": (164, 170), "clock_settime": (227, 112), "adjtimex": (159, 171),
    "clock_adjtime": (305, 266), "sethostname": (170, 161), "setdomainname": (171, 162),
    "iopl": (172, None), "ioperm": (173, None), "modify_ldt": (154, None), "uselib": (134, None),
    "vhangup": (153, 58),
}
# Allowed only when the first argument (a pid) is the program's own or 0 (itself, or its own
# process group, which holds only itself): Python raises signals at itself, glibc's abort()
# too, and setrlimit is prlimit64(0, ...).
SELF_ONLY_SYSCALLS = {
    "kill": (62, 129), "tkill": (200, 130), "tgkill": (234, 131), "rt_sigqueueinfo": (129, 138),
    "rt_tgsigqueueinfo": (297, 240), "prlimit64": (302, 261), "sched_setaffinity": (203, 122),
    "sched_setscheduler": (144, 119), "sched_setparam": (142, 118), "sched_setattr": (314, 274),
}
_ARCHES = {"x86_64": (0, 0xC000003E, True), "aarch64": (1, 0xC00000B7, False)}  # column, AUDIT_ARCH_*, x32 ABI

NOBODY = 65534
_SANDBOX_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
_SETUP_FAILED = 121  # exit status of the sandboxed interpreter when it could not lock itself down
# The repository (this file is in its support/ folder): hidden, as it holds the gold answers.
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SandboxError(RuntimeError):
    """The sandbox could not be set up on this machine (not a failure of the program)."""


@dataclass
class ProgramResult:
    output: str  # stdout and stderr together, its last max_output_chars characters
    returncode: int  # negative: killed by that signal
    timed_out: bool
    layers: list = field(default_factory=list)  # the protections this run had (sandbox_layers)

    @property
    def ok(self):
        return self.returncode == 0 and not self.timed_out


# ---------------------------------------------------------------------------------------------
# Computed by the parent, passed to the sandboxed interpreter as JSON
# ---------------------------------------------------------------------------------------------


def _hidden_folders():
    """Folders the program must not see: other processes, home directories (keys, tokens), temp
    folders other programs use, and the repository and current directory (gold answers)."""
    folders = ["/proc", "/root", "/home", "/tmp", "/var/tmp", "/dev/shm", os.path.expanduser("~"),
               REPOSITORY, os.getcwd()]
    folders = {os.path.realpath(f) for f in folders if os.path.isdir(f)} - {"/"}
    return sorted(f for f in folders if not any(f.startswith(other + "/") for other in folders))


def _python_folders():
    """What the interpreter reads after it starts: its standard library and site-packages."""
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    return sorted({os.path.realpath(p) for p in prefixes if os.path.isdir(p)})


def _inside(path, folder):
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _readable_roots(hidden):
    """Folders that together cover the file system but the hidden ones (Landlock grants whole
    folders, so each ancestor of a hidden folder is split into its other entries)."""
    roots, todo = [], ["/"]
    while todo:
        folder = todo.pop()
        real = os.path.realpath(folder)
        if not os.path.isdir(real) or any(_inside(real, h) for h in hidden):
            continue
        if any(_inside(h, real) for h in hidden):
            todo += [os.path.join(real, name) for name in os.listdir(real)]
        else:
            roots.append(real)
    return sorted(set(roots) | set(_python_folders()))


def _landlock_abi():
    """The Landlock ABI version of this kernel, 0 when it has none."""
    if sys.platform != "linux":
        return 0
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return max(libc.syscall(444, None, 0, 1), 0)  # landlock_create_ruleset(NULL, 0, ..._VERSION)


def _seccomp_tables():
    """(AUDIT_ARCH, x32 guard, denied numbers, self-only numbers) for this machine, or None."""
    if sys.platform != "linux" or platform.machine() not in _ARCHES:
        return None
    column, arch, x32 = _ARCHES[platform.machine()]
    denied = [nrs[column] for nrs in DENIED_SYSCALLS.values() if nrs[column] is not None]
    return arch, x32, denied, [nrs[column] for nrs in SELF_ONLY_SYSCALLS.values()]


# ---------------------------------------------------------------------------------------------
# Run inside the sandboxed interpreter, shipped as source: the repository, where this file
# lives, is hidden from it
# ---------------------------------------------------------------------------------------------


def _seccomp_program(arch, x32, denied, self_only, own_pid):
    """Classic-BPF seccomp filter as (code, jt, jf, k) instructions.

    seccomp hands the filter a struct seccomp_data: nr (the syscall number) at offset 0, arch
    at 4, the low 32 bits of the first argument at 16 (all the kernel reads of a pid). A jump
    skips jt instructions when true and jf when false, forward only: jumps name a label here.
    """
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, JGE|K, BPF_RET|K
    allow, eperm, kill = (ret, 0, 0, 0x7FFF0000), (ret, 0, 0, 0x00050000 | 1), (ret, 0, 0, 0x80000000)
    program = [(ld, 0, 0, 4), (jeq, 0, "kill", arch), (ld, 0, 0, 0)]
    program += [(jge, "deny", 0, 0x40000000)] if x32 else []  # x32 calls alias the numbers below
    program += [(jeq, "deny", 0, nr) for nr in denied] + [(jeq, "self", 0, nr) for nr in self_only]
    program += [allow]  # every other call
    program += ["self", (ld, 0, 0, 16), (jeq, "allow", 0, own_pid), (jeq, "allow", "deny", 0)]
    program += ["allow", allow, "deny", eperm, "kill", kill]
    labels, instructions = {}, []
    for item in program:
        if isinstance(item, str):
            labels[item] = len(instructions)
        else:
            instructions.append(item)
    resolved = []
    for i, (code, jt, jf, k) in enumerate(instructions):
        jt, jf = [labels[j] - i - 1 if isinstance(j, str) else j for j in (jt, jf)]
        if not 0 <= jt < 256 or not 0 <= jf < 256:
            raise ValueError("seccomp filter too long for its jumps")
        resolved.append((code, jt, jf, k))
    return resolved


def _enter_namespaces(libc, settings):
    """New network and mount namespaces (in a user namespace unless we are root), hidden folders
    as empty tmpfs, /tmp a bounded tmpfs holding the working directory. False where the kernel
    refuses: the program then runs in the real working directory, seccomp closing the network."""
    import ctypes

    def mount(source, target, fstype, flags, options):
        if libc.mount(source and source.encode(), target.encode(), fstype and fstype.encode(), flags,
                      options and options.encode()) != 0:
            raise OSError(ctypes.get_errno(), f"mount {target}")

    uid, gid = os.getuid(), os.getgid()
    newuser, newns, newnet = 0x10000000, 0x00020000, 0x40000000
    if libc.unshare(newns | newnet | (0 if uid == 0 else newuser)) != 0:
        return False
    if uid != 0:  # map our own ids, or files we create would have no owner
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    owner = NOBODY if uid == 0 else uid
    nosuid, nodev, bind, rec, private = 2, 4, 4096, 16384, 1 << 18
    mount(None, "/", None, rec | private, None)  # nothing we mount propagates to the host
    hidden = [folder for folder in settings["hidden"] if folder not in ("/proc", "/tmp")]
    covered = [path for path in settings["python"]
               if any(path == h or path.startswith(h + "/") for h in hidden + ["/tmp"])]
    keep = [(path, os.open(path, os.O_PATH)) for path in covered]  # the Python installation, mounted back
    # /tmp first: a repository or a virtual environment under /tmp (a CI clone) is then hidden and
    # mounted back inside it, not buried under it
    size, files = settings["disk_mb"], settings["disk_files"]
    mount("tmpfs", "/tmp", "tmpfs", nosuid | nodev, f"size={size}m,nr_inodes={files},mode=0700,uid={owner},gid={owner}")
    for folder in hidden:
        os.makedirs(folder, exist_ok=True)  # gone already if it was under /tmp
        mount("tmpfs", folder, "tmpfs", nosuid | nodev, "size=1m,mode=0755")
    for path, fd in keep:
        os.makedirs(path, exist_ok=True)
        mount(f"/proc/self/fd/{fd}", path, None, bind | rec, None)
    os.chdir("/tmp")
    return True


def _landlock(libc, abi, read_roots):
    """Write only in the working directory (and /dev/null), read only the read roots, execute
    nothing. Rights: execute 1, write_file 2, read_file 4, read_dir 8, then remove, make_* up
    to 1<<12; refer 1<<13 from ABI 2; truncate 1<<14 from ABI 3. Handled rights are denied unless
    a rule beneath a folder grants them."""
    import ctypes

    handled = (1 << 13) - 1 | (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0)
    read, file_rw, own = 4 | 8, 2 | 4 | (1 << 14 if abi >= 3 else 0), handled & ~1
    ruleset = ctypes.c_uint64(handled)  # struct landlock_ruleset_attr {handled_access_fs}
    ruleset_fd = libc.syscall(444, ctypes.byref(ruleset), 8, 0)  # landlock_create_ruleset
    for path, access in [(path, read) for path in read_roots] + [(".", own), ("/dev/null", file_rw)]:
        path_fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        rule = ctypes.create_string_buffer(12)  # packed {u64 allowed_access; s32 parent_fd}
        ctypes.memmove(rule, ctypes.byref(ctypes.c_uint64(access)), 8)
        ctypes.memmove(ctypes.byref(rule, 8), ctypes.byref(ctypes.c_int32(path_fd)), 4)
        if ruleset_fd < 0 or libc.syscall(445, ruleset_fd, 1, rule, 0) != 0:  # PATH_BENEATH
            raise OSError(ctypes.get_errno(), f"landlock_add_rule({path})")
        os.close(path_fd)
    if libc.syscall(446, ruleset_fd, 0) != 0:  # landlock_restrict_self
        raise OSError(ctypes.get_errno(), "landlock_restrict_self")


def _seccomp(libc, tables):
    import ctypes

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

    instructions = _seccomp_program(*tables, os.getpid())
    program = SockFprog(len(instructions), (SockFilter * len(instructions))(*[SockFilter(*i) for i in instructions]))
    if libc.prctl(22, 2, ctypes.byref(program), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def _sandboxed_main():
    """What the sandboxed interpreter runs first: lock itself down (the layers of the module
    docstring, in that order: namespaces and the uid change need privileges that the later
    layers take away), report the layers it has on the report pipe, then run program.py."""
    import ctypes
    import resource

    settings = json.loads(sys.argv[1])
    layers = ["rlimits"]
    try:
        source = open("program.py", encoding="utf-8").read()  # before /tmp is replaced
        libc = ctypes.CDLL(None, use_errno=True)
        if settings["namespaces"] and _enter_namespaces(libc, settings):
            layers.append("namespaces")
            with open("program.py", "w", encoding="utf-8") as f:
                f.write(source)
            if os.getuid() == 0:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                layers.append("nobody")
        for name, value in settings["rlimits"].items():
            resource.setrlimit(getattr(resource, name), (value, value))
        if (settings["landlock_abi"] or settings["seccomp"]) and libc.prctl(38, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")  # Landlock and seccomp need it
        if settings["landlock_abi"]:
            _landlock(libc, settings["landlock_abi"], settings["read_roots"])
            layers.append("landlock")
        if settings["seccomp"]:
            _seccomp(libc, settings["seccomp"])
            layers.append("seccomp")
    except (OSError, ValueError) as e:
        print(f"sandbox setup failed: {e}", file=sys.stderr)
        sys.exit(121)
    os.write(settings["report_fd"], json.dumps(layers).encode())
    os.close(settings["report_fd"])
    sys.argv = ["program.py"]
    try:
        exec(compile(source, "program.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    except Exception as e:  # the traceback from program.py on, without this function's frame
        import traceback

        traceback.print_exception(type(e), e, e.__traceback__.tb_next)
        sys.exit(1)


_SHIPPED = (_seccomp_program, _enter_namespaces, _landlock, _seccomp, _sandboxed_main)


@functools.cache
def _prelude():
    sources = "\n\n".join(inspect.getsource(f) for f in _SHIPPED)
    return f"import json, os, sys\nNOBODY = {NOBODY}\n\n{sources}\n\n_sandboxed_main()\n"


# ---------------------------------------------------------------------------------------------
# The parent's side
# ---------------------------------------------------------------------------------------------


def _as_text(code):
    """Model output as str: invalid UTF-8 and lone surrogates become U+FFFD, not an exception."""
    if isinstance(code, (bytes, bytearray)):
        return bytes(code).decode("utf-8", errors="replace")
    return code.encode("utf-8", errors="replace").decode("utf-8")


def run_program(code, timeout=10.0, memory_mb=2048, max_output_chars=4000, max_file_mb=16, disk_mb=64):
    """Run Python `code` (str or bytes) in the sandbox described above; return its captured output.

    timeout: wall-clock seconds (CPU time is limited to one second more, so that a busy loop is
    stopped by the wall clock and reported as timed out, not killed first by the CPU limit: the
    program's CPU clock starts a moment before our wall clock does); memory_mb: its address
    space; max_file_mb: the largest file it may write, its output included; disk_mb: all it may
    write (with namespaces); max_output_chars: the output kept, its last characters (a program
    prints its answer last). Raises SandboxError only when the sandbox itself cannot be set up.
    """
    workdir = tempfile.mkdtemp(prefix="sandbox-")
    report_read, report_write = os.pipe()
    try:
        with open(os.path.join(workdir, "program.py"), "w", encoding="utf-8") as f:
            f.write(_as_text(code))
        hidden = _hidden_folders()
        settings = {
            "rlimits": {"RLIMIT_AS": memory_mb << 20, "RLIMIT_CPU": math.ceil(timeout) + 1,
                        "RLIMIT_FSIZE": max_file_mb << 20, "RLIMIT_NOFILE": 64, "RLIMIT_CORE": 0, "RLIMIT_NPROC": 0},
            "namespaces": sys.platform == "linux", "hidden": hidden, "python": _python_folders(),
            "disk_mb": disk_mb, "disk_files": 1024,
            "landlock_abi": min(_landlock_abi(), 3), "read_roots": _readable_roots(hidden),
            "seccomp": _seccomp_tables(), "report_fd": report_write,
        }
        command = [sys.executable, "-I", "-c", _prelude(), json.dumps(settings)]
        with tempfile.TemporaryFile() as output:  # outside workdir: the program cannot reach it by name
            process = subprocess.Popen(command, cwd=workdir, env=_SANDBOX_ENV, stdin=subprocess.DEVNULL, stdout=output,
                                       stderr=subprocess.STDOUT, start_new_session=True, pass_fds=(report_write,))
            os.close(report_write)
            report_write = None
            try:
                process.wait(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            with contextlib.suppress(ProcessLookupError):  # the whole group, should it have forked
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            # the tail: a program prints its answer last, after whatever it printed on the way
            size = output.seek(0, os.SEEK_END)
            cut = size > 4 * max_output_chars
            output.seek(size - 4 * max_output_chars if cut else 0)
            text = output.read().decode("utf-8", errors="replace")
        report = os.read(report_read, 4096)
    finally:
        for fd in (report_read, report_write):
            if fd is not None:
                os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)
    # The setup reports its layers before the program starts, so an empty report is a setup that
    # failed; a program's own exit status or output (it may print "sandbox setup failed" and exit
    # 121 to fake it) cannot stop the run.
    if not report and process.returncode == _SETUP_FAILED and not timed_out:
        raise SandboxError(f"{text.strip()[-500:]}; this machine cannot run programs in the sandbox")
    if cut or len(text) > max_output_chars:
        text = "[... output truncated]\n" + text[-max_output_chars:]
    return ProgramResult(text, process.returncode, timed_out, json.loads(report) if report else [])


def run_programs(codes, n_workers=0, **limits):
    """run_program over many programs, several at a time (threads: each one waits on a process)."""
    with ThreadPoolExecutor(max_workers=n_workers or os.cpu_count() or 1) as pool:
        return list(pool.map(lambda code: run_program(code, **limits), codes))


@functools.cache
def sandbox_layers():
    """The protections run_program has on this machine: rlimits, namespaces, nobody, landlock,
    seccomp (a program that does nothing reports them)."""
    return run_program("", timeout=30).layers
