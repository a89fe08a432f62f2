"""Confinement between fork and exec: the ctypes code behind the auditor sandbox.

Imported by the launcher (`scanfleet/sandbox/forkserver.py`, run with -I -S), whose forked child
calls `confine` and then execs the auditor; scanfleet itself imports it for `abi_version`.
`confine` sets PR_SET_PDEATHSIG SIGKILL (and gives up if the parent is already gone),
builds a Landlock ruleset from a policy dict (see `scanfleet.sandbox.policy.Policy.to_dict`),
drops every capability (bounding set, ambient, effective/permitted/inheritable), sets
no_new_privs, restricts the calling thread with the ruleset and installs the seccomp socket
allow-list (`restrict_sockets`). It also holds what the launcher's per-scan supervisor uses
(`become_subreaper`, `kill_descendants`).

What it must never do:
- import anything outside the standard library (the launcher runs with -I -S, so it
  cannot, and it must stay cheap to import);
- return normally when a requested restriction could not be applied (fail closed: it
  raises, and the caller runs nothing);
- print the policy or the environment (they hold paths only, but the rule is simple).

Why ctypes rather than the `landlock` PyPI binding: that binding (1.0.0.dev5) only knows the
filesystem half of Landlock (no network rules, ABI 4, nor scopes, ABI 6), declares
`landlock_path_beneath_attr` unpacked and reads a stale errno after successful calls. The
three syscalls are small and stable; they are spelled out here. The same goes for seccomp:
libseccomp's own Python binding ships with distributions (python3-seccomp), not on PyPI
(only third-party rebuilds and a stale ctypes port are), and the launcher, run with -I -S,
could not import a site package anyway; the program is 26-27 classic-BPF instructions.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import stat

SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446  # same on every arch
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH, RULE_NET_PORT = 1, 2

FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_TRUNCATE, FS_IOCTL_DEV = 1 << 14, 1 << 15
FS_ABI1 = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
FS_REFER = 1 << 13
FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
READ_RIGHTS = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1

PR_SET_PDEATHSIG, PR_GET_DUMPABLE, PR_SET_DUMPABLE = 1, 3, 4
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 24, 38
PR_GET_SECCOMP, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 21, 22, 2
PR_SET_CHILD_SUBREAPER = 36
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
CAP_VERSION_3 = 0x20080522
EXIT_SANDBOX = 125

_libc = ctypes.CDLL(None, use_errno=True)


class SandboxError(Exception):
    pass


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneath(ctypes.Structure):
    _pack_ = 1  # __attribute__((packed)) in the uapi header
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


class _NetPort(ctypes.Structure):
    _fields_ = (("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64))


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


# --- seccomp: which sockets the auditor may create ------------------------------------------
#
# Landlock's network rules cover TCP only (not MPTCP, SCTP, raw, packet or netlink sockets),
# so a classic-BPF seccomp filter allows socket() only for what the auditor needs: AF_UNIX,
# and AF_INET/AF_INET6 with SOCK_STREAM + 0/IPPROTO_TCP or SOCK_DGRAM + 0/IPPROTO_UDP (DNS).
# Anything else gets EACCES, as does socketpair() outside AF_UNIX and io_uring_setup (an
# io_uring can create sockets without the socket() syscall). The filter checks the
# architecture: another one (a 32-bit binary and its socketcall(), say) is killed, and x32
# syscalls on x86_64 get EACCES.

AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
SOCK_STREAM, SOCK_DGRAM = 1, 2
SOCK_FLAGS = 0o4000 | 0o2000000  # SOCK_NONBLOCK | SOCK_CLOEXEC (x86_64, aarch64)
IPPROTO_TCP, IPPROTO_UDP = 6, 17
EACCES = 13
# arch: (AUDIT_ARCH_*, socket, socketpair, io_uring_setup)
SECCOMP_ARCHES = {
    "x86_64": (0xC000003E, 41, 53, 425),
    "aarch64": (0xC00000B7, 198, 199, 425),
}
X32_SYSCALL_BIT = 0x40000000
RET_KILL_PROCESS, RET_ERRNO, RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
_BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_JGE_K, _BPF_AND_K, _BPF_RET_K = 0x20, 0x15, 0x35, 0x54, 0x06
_NR, _ARCH, _ARG0, _ARG1, _ARG2 = 0, 4, 16, 24, 32  # offsets in struct seccomp_data (LE)


class _SockFilter(ctypes.Structure):
    _fields_ = (
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    )


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter)))


def socket_filter(machine: str | None = None) -> list[tuple[int, int, int, int]]:
    """The seccomp program (code, jt, jf, k) for this machine; SandboxError if unknown."""
    machine = machine or os.uname().machine
    if machine not in SECCOMP_ARCHES:
        raise SandboxError(f"no seccomp socket filter for the {machine} architecture")
    arch, nr_socket, nr_socketpair, nr_io_uring = SECCOMP_ARCHES[machine]
    deny = RET_ERRNO | EACCES
    # Jumps are relative: (code, jump if true, jump if false, k). Labels resolved below.
    prog: list[tuple[int | str, int | str, int | str, int]] = [
        (_BPF_LD_W_ABS, 0, 0, _ARCH),
        (_BPF_JEQ_K, 1, 0, arch),
        (_BPF_RET_K, 0, 0, RET_KILL_PROCESS),
        (_BPF_LD_W_ABS, 0, 0, _NR),
    ]
    if machine == "x86_64":
        prog.append((_BPF_JGE_K, "deny", 0, X32_SYSCALL_BIT))
    prog += [
        (_BPF_JEQ_K, "socket", 0, nr_socket),
        (_BPF_JEQ_K, "socketpair", 0, nr_socketpair),
        (_BPF_JEQ_K, "deny", 0, nr_io_uring),
        (_BPF_RET_K, 0, 0, RET_ALLOW),  # every other syscall
        ("socketpair", 0, 0, 0),
        (_BPF_LD_W_ABS, 0, 0, _ARG0),
        (_BPF_JEQ_K, "allow", "deny", AF_UNIX),
        ("socket", 0, 0, 0),
        (_BPF_LD_W_ABS, 0, 0, _ARG0),
        (_BPF_JEQ_K, "allow", 0, AF_UNIX),
        (_BPF_JEQ_K, "inet", 0, AF_INET),
        (_BPF_JEQ_K, "inet", "deny", AF_INET6),
        ("inet", 0, 0, 0),
        (_BPF_LD_W_ABS, 0, 0, _ARG1),
        (_BPF_AND_K, 0, 0, 0xFFFFFFFF & ~SOCK_FLAGS),
        (_BPF_JEQ_K, "stream", 0, SOCK_STREAM),
        (_BPF_JEQ_K, "dgram", "deny", SOCK_DGRAM),
        ("stream", 0, 0, 0),
        (_BPF_LD_W_ABS, 0, 0, _ARG2),
        (_BPF_JEQ_K, "allow", 0, 0),
        (_BPF_JEQ_K, "allow", "deny", IPPROTO_TCP),
        ("dgram", 0, 0, 0),
        (_BPF_LD_W_ABS, 0, 0, _ARG2),
        (_BPF_JEQ_K, "allow", 0, 0),
        (_BPF_JEQ_K, "allow", "deny", IPPROTO_UDP),
        ("deny", 0, 0, 0),
        (_BPF_RET_K, 0, 0, deny),
        ("allow", 0, 0, 0),
        (_BPF_RET_K, 0, 0, RET_ALLOW),
    ]
    labels: dict[str, int] = {}
    code: list[tuple[int | str, int | str, int | str, int]] = []
    for op in prog:
        if isinstance(op[0], str):
            labels[op[0]] = len(code)
        else:
            code.append(op)

    def target(jump: int | str, i: int) -> int:
        return labels[jump] - i - 1 if isinstance(jump, str) else jump

    return [(int(op), target(jt, i), target(jf, i), k) for i, (op, jt, jf, k) in enumerate(code)]


def seccomp_available() -> bool:
    """Whether this kernel (and the runtime's own seccomp profile) lets a process install a
    seccomp filter: PR_SET_SECCOMP with a NULL program fails with EFAULT if it does, EINVAL
    when seccomp filters are missing (or EPERM/ENOSYS when a runtime forbids them)."""
    if _prctl(PR_GET_SECCOMP) < 0:
        return False
    r = int(
        _libc.prctl(
            PR_SET_SECCOMP,
            ctypes.c_ulong(SECCOMP_MODE_FILTER),
            ctypes.c_void_p(0),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
        )
    )
    return r < 0 and ctypes.get_errno() == 14  # EFAULT


def restrict_sockets() -> None:
    """Install the socket filter on this thread (inherited by every child and across exec).
    Needs no_new_privs (set first); raises SandboxError when it cannot be installed."""
    program = socket_filter()
    filters = (_SockFilter * len(program))(*(_SockFilter(*op) for op in program))
    fprog = _SockFprog(len(program), filters)
    _no_new_privs()
    _check(
        int(
            _libc.prctl(
                PR_SET_SECCOMP,
                ctypes.c_ulong(SECCOMP_MODE_FILTER),
                ctypes.byref(fprog),
                ctypes.c_ulong(0),
                ctypes.c_ulong(0),
            )
        ),
        "prctl(PR_SET_SECCOMP) socket filter",
    )


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise SandboxError(f"{what}: {os.strerror(err)} (errno {err})")
    return result


def _syscall(*args: object) -> int:
    return int(_libc.syscall(*[ctypes.c_long(a) if isinstance(a, int) else a for a in args]))


def _prctl(option: int, arg: int = 0) -> int:
    return int(
        _libc.prctl(
            option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)
        )
    )


def become_subreaper() -> None:
    """PR_SET_CHILD_SUBREAPER: orphaned descendants (double-forked, setsid) are re-parented
    to this process instead of init, so it can find and kill them."""
    _check(_prctl(PR_SET_CHILD_SUBREAPER, 1), "prctl(PR_SET_CHILD_SUBREAPER)")


def parent_death_signal(sig: int) -> None:
    """PR_SET_PDEATHSIG: `sig` when the thread that forked this process exits."""
    _check(_prctl(PR_SET_PDEATHSIG, sig), "prctl(PR_SET_PDEATHSIG)")


def children() -> list[int]:
    """This (single-threaded) process's children: /proc/self/task/<pid>/children, or a scan of
    /proc where the kernel lacks CONFIG_PROC_CHILDREN."""
    me = os.getpid()
    try:
        with open(f"/proc/self/task/{me}/children", "rb") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        pass
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        if int(raw[raw.rfind(b")") + 2 :].split()[1]) == me:
            found.append(int(entry))
    return found


def kill_descendants() -> None:
    """SIGKILL every descendant of this subreaper and reap them, until none is left.

    Killing a child re-parents its children here (subreaper) before the child can be
    reaped, so once waitpid finds no child at all, no descendant is left."""
    while True:
        for pid in children():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return
        except InterruptedError:
            continue


def make_non_dumpable() -> None:
    """PR_SET_DUMPABLE 0: no core dumps, and /proc/<pid>/environ, mem, fd of this process
    readable only with CAP_SYS_PTRACE. Forks inherit it; exec resets it."""
    _check(_prctl(PR_SET_DUMPABLE, 0), "prctl(PR_SET_DUMPABLE, 0)")


def is_dumpable() -> bool:
    return _prctl(PR_GET_DUMPABLE) == 1


def abi_version() -> int:
    """The kernel's Landlock ABI, or 0 when Landlock is missing or disabled."""
    v = _syscall(SYS_CREATE_RULESET, None, 0, CREATE_RULESET_VERSION)
    return max(v, 0)


def handled_fs(abi: int) -> int:
    rights = FS_ABI1
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def _add_path(ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # gone since the policy was built: nothing to allow
    except OSError as e:
        raise SandboxError(f"cannot open {path!r} for a rule: {e.strerror}") from None
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= FILE_RIGHTS
        attr = _PathBeneath(rights, fd)
        _check(
            _syscall(SYS_ADD_RULE, ruleset, RULE_PATH_BENEATH, ctypes.byref(attr), 0),
            f"landlock_add_rule {path!r}",
        )
    finally:
        os.close(fd)


def landlock(policy: dict[str, object], abi: int) -> None:
    """Build the ruleset of `policy` for `abi` and restrict this thread with it."""
    fs = handled_fs(abi)
    net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    attr = _RulesetAttr(fs, net, scoped)
    ruleset = _check(
        _syscall(SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.sizeof(attr), 0),
        "landlock_create_ruleset",
    )
    try:
        for path in policy.get("read", []):  # type: ignore[attr-defined]
            _add_path(ruleset, str(path), READ_RIGHTS & fs)
        for path in policy.get("write", []):  # type: ignore[attr-defined]
            _add_path(ruleset, str(path), fs)
        if net:
            for port in policy.get("connect", []):  # type: ignore[attr-defined]
                rule = _NetPort(NET_CONNECT_TCP, int(port))
                _check(
                    _syscall(SYS_ADD_RULE, ruleset, RULE_NET_PORT, ctypes.byref(rule), 0),
                    f"landlock_add_rule port {port}",
                )
        _no_new_privs()  # restrict_self needs it (idempotent)
        _check(_syscall(SYS_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
    finally:
        os.close(ruleset)


def drop_capabilities() -> None:
    """Empty the bounding, ambient, effective, permitted and inheritable sets.

    Unprivileged, the bounding set cannot be changed (EPERM) and needs not be: a non-root
    process with no_new_privs gains nothing at exec. As root it must be emptied, or exec
    would hand the auditor the bounding set again; failing that, refuse.
    """
    bounding_kept = False
    for cap in range(64):
        if _prctl(PR_CAPBSET_DROP, cap) < 0:
            err = ctypes.get_errno()
            if err == 22:  # EINVAL: past the last capability
                break
            bounding_kept = True
    if _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL) < 0 and ctypes.get_errno() != 22:
        raise SandboxError(f"cannot clear ambient capabilities: errno {ctypes.get_errno()}")
    header = _CapHeader(CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(int(_libc.capset(ctypes.byref(header), data)), "capset")
    if bounding_kept and (os.geteuid() == 0 or os.getuid() == 0):
        raise SandboxError(
            "running as root without CAP_SETPCAP: the capability bounding set "
            "cannot be emptied, so exec would restore capabilities"
        )


def _no_new_privs() -> None:
    _check(_prctl(PR_SET_NO_NEW_PRIVS, 1), "prctl(PR_SET_NO_NEW_PRIVS)")


def confine(policy: dict[str, object], parent_pid: int) -> None:
    """Everything but the exec, in the order the kernel needs it.

    PR_SET_PDEATHSIG always (also with the sandbox off): the auditor dies with the thread
    that started it. Privileges and Landlock only when the policy asks for them.
    """
    _check(_prctl(PR_SET_PDEATHSIG, signal.SIGKILL), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent_pid:
        raise SandboxError("the scanfleet process that started the auditor is gone")
    if policy.get("drop_privileges", True):
        drop_capabilities()
        _no_new_privs()
    if policy.get("landlock"):
        abi = abi_version()
        if abi < 1:
            raise SandboxError("Landlock is not available in this kernel")
        landlock(policy, abi)
    if policy.get("seccomp"):
        restrict_sockets()


def which(name: str, path: str | None = None) -> str:
    """`name` resolved on `path` (a PATH value; ours by default) now: nothing may be
    looked up once Landlock is on."""
    if os.sep in name:
        return name
    directories = os.get_exec_path() if path is None else path.split(os.pathsep)
    for directory in directories:
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(2, "No such file or directory", name)
