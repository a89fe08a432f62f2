"""The auditor sandbox: what the auditor may touch, decided here, enforced by the kernel.

The auditor runs untrusted Ruby (the profile) and parses text a hostile container prints.
It gets the scan's throwaway kubeconfig and nothing else of the worker's: this module
builds a Landlock policy for one scan and hands it, with the auditor's command line, to
this process's launcher (`scanfleet/sandbox/forkserver.py`), whose forked child applies it between
fork and exec (`scanfleet/sandbox/confine.py`).

    read + execute   system directories (/usr, /lib*, /bin, /sbin), a curated part of
                     /etc (DNS, TLS trust, users, locale; not shadow, ssh, kubernetes),
                     the auditor's installation, gem and InSpec config dirs, the profile
                     and input files (when local), the kubeconfig (that one file),
                     SCANFLEET_SANDBOX_ALLOW_READ
    read + write     the scan's private work dir (HOME, TMPDIR, report), /dev/null,
                     SCANFLEET_SANDBOX_ALLOW_WRITE
    TCP connect      the API server's port from the kubeconfig, the HTTPS proxy's port
                     (Landlock ABI >= 4); binding nothing
    sockets          seccomp: socket() only for AF_UNIX, TCP and UDP (no MPTCP, SCTP, raw,
                     packet, netlink: EACCES), no io_uring; without seccomp nothing runs
    scopes           no signals to, no abstract unix sockets of, processes outside the
                     sandbox (ABI >= 6); no ptrace of them (every ABI)
    process          no capabilities, no_new_privs, SIGKILL when its parent dies

What it must never do:
- let an allow rule cover a protected path: the service account secrets
  (SCANFLEET_SANDBOX_PROTECT, default /var/run/secrets and /run/secrets), ~/.kube, the
  worker's KUBECONFIG; nor contain the temp root (other scans), the results directory or
  the worker's HOME. Such a policy is refused (SandboxUnavailable), never trimmed silently;
- fall back to running unconfined: without Landlock a scan is refused unless the operator
  set SCANFLEET_SANDBOX=off (then `run_auditor` logs a warning on every scan);
- read more of the kubeconfig than its server URL (for the port), or log it.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog
import yaml

import scanfleet.sandbox.spawn
from scanfleet.core.errors import AuditorFailed, SandboxUnavailable
from scanfleet.core.settings import ALLOW_READ_ENV, ALLOW_WRITE_ENV, SANDBOX_ENV, SandboxSettings
from scanfleet.sandbox import confine, inputs
from scanfleet.sandbox.spawn import AuditorProcess, LauncherLost, SpawnFailed

SYSTEM_READ = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin")
# /etc, entry by entry: what a Ruby CLI, OpenSSL, glibc's resolver and kubectl read. Not
# the rest (shadow, ssh host keys, sudoers, kubernetes/, machine-id, ...).
ETC_READ = (
    "resolv.conf",
    "hosts",
    "host.conf",
    "nsswitch.conf",
    "gai.conf",
    "services",
    "protocols",
    "passwd",
    "group",
    "localtime",
    "timezone",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "ssl",
    "pki",
    "ca-certificates",
    "ca-certificates.conf",
    "crypto-policies",
    "gemrc",
    "mime.types",
    "os-release",
    "alternatives",
)
DEV_READ = ("/dev/urandom", "/dev/random", "/dev/zero")
DEV_WRITE = ("/dev/null",)
FILE_FLAGS = inputs.FILE_FLAGS
# libyaml's safe loader when present: the kubeconfig is parsed on every scan.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

log = structlog.get_logger(__name__)


"""The operator's sandbox settings, parsed by settings.py (`Settings.sandbox`)."""


@dataclass(frozen=True)
class Policy:
    """What the launcher's child enforces for one scan (paths resolved, ports as numbers)."""

    landlock: bool
    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    connect: tuple[int, ...] = ()
    drop_privileges: bool = True
    seccomp: bool = False
    """The socket allow-list (`confine.restrict_sockets`): AF_UNIX, TCP and UDP only."""

    def to_dict(self) -> dict[str, object]:
        return {
            "landlock": self.landlock,
            "seccomp": self.seccomp,
            "read": list(self.read),
            "write": list(self.write),
            "connect": list(self.connect),
            "drop_privileges": self.drop_privileges,
        }


@dataclass(frozen=True)
class WorkDir:
    """The auditor's writable corner of the scan's private directory."""

    root: Path
    home: Path = field(init=False)
    tmp: Path = field(init=False)
    report: Path = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", self.root / "home")
        object.__setattr__(self, "tmp", self.root / "tmp")
        object.__setattr__(self, "report", self.root / "report.json")


def prepare_workdir(private_dir: Path) -> WorkDir:
    """`private_dir/auditor/{home,tmp}`, 0700, emptied of a previous report."""
    work = WorkDir(private_dir / "auditor")
    for d in (work.root, work.home, work.tmp):
        d.mkdir(mode=0o700, exist_ok=True)
    work.report.unlink(missing_ok=True)
    return work


def abi_version() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is absent or disabled."""
    return confine.abi_version()


def seccomp_available() -> bool:
    """Whether seccomp filters can be installed here (the socket allow-list needs them)."""
    return confine.seccomp_available() and os.uname().machine in confine.SECCOMP_ARCHES


def mode_label(config: SandboxSettings) -> str:
    """What the run summary records: "landlock-abi-N" or "off". Raises when unavailable."""
    if not config.enabled:
        return "off"
    abi = abi_version()
    if abi < 1:
        raise SandboxUnavailable(
            "the auditor sandbox needs Linux Landlock (kernel 5.13+ with landlock in the "
            "LSM list, and a seccomp profile that allows the landlock_* syscalls), and it is "
            f"not available here; refusing to scan. Set {SANDBOX_ENV}=off to scan without "
            "the sandbox (the auditor then reaches whatever the worker can)"
        )
    if not seccomp_available():
        raise SandboxUnavailable(
            "the auditor sandbox needs seccomp filters (Linux 3.5+ with CONFIG_SECCOMP_FILTER "
            f"on x86_64 or aarch64, and a container runtime that allows prctl(PR_SET_SECCOMP)) "
            "to allow only TCP, UDP and unix sockets, and they are not available here; "
            f"refusing to scan. Set {SANDBOX_ENV}=off to scan without the sandbox"
        )
    return f"landlock-abi-{abi}"


def activate(config: SandboxSettings) -> str:
    """`mode_label`, plus the warning every scan logs when the sandbox is off or partial."""
    mode = mode_label(config)
    if not config.enabled:
        log.warning(
            "sandbox.off",
            reason=f"{SANDBOX_ENV}=off: the auditor runs unconfined, "
            "with everything the worker can reach",
        )
    elif missing := gaps(abi_version()):
        log.warning("sandbox.partial", sandbox=mode, not_enforced=missing)
    return mode


def gaps(abi: int) -> list[str]:
    """What this Landlock ABI cannot enforce (logged as a warning on every scan)."""
    missing = []
    if abi < 4:
        missing.append("network (TCP connect/bind; Landlock ABI 4, Linux 6.7)")
    if abi < 6:
        missing.append("signal and abstract unix socket scopes (Landlock ABI 6, Linux 6.12)")
    return missing


def describe(config: SandboxSettings) -> dict[str, Any]:
    """What the sandbox enforces on this host (for `scanfleet sandbox`)."""
    abi = abi_version()
    try:
        mode = mode_label(config)
    except SandboxUnavailable:
        mode = "unavailable"
    on = config.enabled and abi >= 1
    return {
        "mode": mode,
        "landlock_abi": abi,
        "filesystem": on,
        "filesystem_truncate": on and abi >= 3,
        "filesystem_ioctl_dev": on and abi >= 5,
        "network_tcp": on and abi >= 4,
        "sockets_tcp_udp_unix_only": on and seccomp_available(),
        "scope_signal": on and abi >= 6,
        "scope_abstract_unix_socket": on and abi >= 6,
        "ptrace": on,
        "capabilities_dropped": config.enabled,
        "no_new_privs": config.enabled,
        "dies_with_worker": True,
        "system_read": [p for p in SYSTEM_READ if os.path.exists(p)],
        "etc_read": [n for n in ETC_READ if os.path.exists(f"/etc/{n}")],
        "allow_read": [str(p) for p in config.allow_read],
        "allow_write": [str(p) for p in config.allow_write],
        "protect": [str(p) for p in config.protect],
    }


def harden_process() -> None:
    """Make this process non-dumpable: no core dumps, and /proc/<pid>/environ, mem, fd of
    it readable only with CAP_SYS_PTRACE. Call at CLI and worker start (forks inherit it,
    exec resets it; the launcher does it for itself)."""
    try:
        confine.make_non_dumpable()
    except confine.SandboxError as e:
        raise OSError(f"cannot make this process non-dumpable: {e}") from None


class ExecFailed(Exception):
    """The auditor was confined but could not be exec'd (missing, not executable)."""


def spawn(policy: Policy, argv: Sequence[str], env: Mapping[str, str]) -> AuditorProcess:
    """Start `argv` through this process's launcher, confined by `policy`, in a new session,
    and return once it is the auditor. stdin and stdout are /dev/null, stderr a pipe.
    Raises SandboxUnavailable (nothing ran), ExecFailed, AuditorFailed (the launcher died
    before the auditor started), or whatever interrupts the wait (the auditor is killed)."""
    try:
        return scanfleet.sandbox.spawn.get().spawn(argv, env, os.getcwd(), policy.to_dict())
    except SpawnFailed as e:
        detail = str(e)
        if e.kind == "exec":
            if policy.landlock and "PermissionError" in detail:
                detail += f"; inside the sandbox: add its directory to {ALLOW_READ_ENV}"
            raise ExecFailed(detail) from None
        raise SandboxUnavailable(f"the auditor sandbox could not be applied: {detail}") from None
    except LauncherLost as e:
        raise AuditorFailed(
            f"{e}; the scan was not run (the next one starts a new launcher)"
        ) from None
    except OSError as e:  # the launcher itself cannot be started or spoken to
        raise SandboxUnavailable(f"the auditor launcher cannot be run: {e}") from e


@dataclass(frozen=True)
class Scan:
    """What one scan's policy depends on."""

    executable: str
    profile: str
    kubeconfig: Path
    workdir: WorkDir
    results_dir: Path
    input_files: Sequence[Path | str] = ()
    extra_args: Sequence[str] = ()


def build_policy(
    config: SandboxSettings, scan: Scan, env: Mapping[str, str], worker_env: Mapping[str, str]
) -> Policy:
    """The policy of one scan. `env` is the auditor's environment, `worker_env` ours."""
    if not config.enabled:
        return Policy(landlock=False, drop_privileges=False)
    _refuse_inputs(config, scan, worker_env)
    read = [
        str(scan.kubeconfig),
        *_auditor_dirs(scan.executable, env),
        *_local_inputs(scan),
        *map(str, config.allow_read),
    ]
    kubectl = _which_kubectl(env.get("PATH"))
    if kubectl:
        read.append(kubectl)
    write = [str(scan.workdir.root), *DEV_WRITE, *map(str, config.allow_write)]
    policy = Policy(
        landlock=True,
        read=tuple(dict.fromkeys((*_system_read(), *_existing(read)))),
        write=_existing(write),
        connect=tuple(sorted(_ports(scan.kubeconfig, env))),
        seccomp=True,
    )
    _refuse_exposure(policy, config, scan, worker_env)
    return policy


@functools.lru_cache(maxsize=1)
def _system_read() -> tuple[str, ...]:
    """The fixed read rules, resolved once per process (system paths do not move)."""
    return _existing([*SYSTEM_READ, *(f"/etc/{n}" for n in ETC_READ), *DEV_READ])


@functools.lru_cache(maxsize=16)
def _which_kubectl(path: str | None) -> str | None:
    return shutil.which("kubectl", path=path)


def _existing(paths: Iterable[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for p in paths:
        if os.path.exists(p):
            seen.setdefault(os.path.realpath(p))
    return tuple(seen)


def _auditor_dirs(executable: str, env: Mapping[str, str]) -> list[str]:
    """The auditor's installation (`/opt/x` for `/opt/x/bin/auditor`) and Ruby/InSpec dirs."""
    real = Path(os.path.realpath(executable))
    root = real.parent.parent if real.parent.name == "bin" else real.parent
    dirs = [str(real)]
    home = Path.home()
    if root not in (Path("/"), home) and root not in home.parents:
        dirs.append(str(root))
    for name in ("GEM_HOME", "GEM_PATH", "INSPEC_CONFIG_DIR"):
        dirs += [p for p in env.get(name, "").split(os.pathsep) if p]
    return dirs


def _local_inputs(scan: Scan) -> list[str]:
    """The profile and file arguments that name local files."""
    found = [scan.profile, *inputs.plan_inputs(scan.input_files, scan.extra_args)]
    return [f for f in found if f and "://" not in f and os.path.exists(f)]


# A run's directory is `<results root>/<run id>` (scanfleet.store.files.RUN_ID_RE).
_RUN_DIR = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{6}")


def _results_root(results_dir: Path) -> list[str]:
    """The results root holding this run's directory (other runs live there), if it is one."""
    return [str(results_dir.parent)] if _RUN_DIR.fullmatch(results_dir.name) else []


def _refuse_inputs(config: SandboxSettings, scan: Scan, worker_env: Mapping[str, str]) -> None:
    """Input and waiver files: regular files only, and none inside the worker's HOME,
    /proc, the results (this run's and the others'), anything of scanfleet's under the temp
    root (other scans' private directories, the profile cache) or the broker URL file.
    A local profile (a plan names it too): none inside /proc, the results, another scan's
    private directory or the broker URL file (HOME and the profile cache are where
    operators and `scanfleet` keep profiles; SCANFLEET_ALLOWED_PROFILES decides)."""
    home = worker_env.get("HOME") or os.path.expanduser("~")
    off_limits = {
        "/proc": ["/proc"],
        "the results": [str(scan.results_dir), *_results_root(scan.results_dir)],
        "the broker URL file": [str(config.broker_url_file)] if config.broker_url_file else [],
    }
    if "://" not in scan.profile and os.path.lexists(scan.profile):
        _refuse_inside(scan.profile, "profile", off_limits, "scanfleet-")
    if os.path.realpath(home) != "/":
        off_limits["the worker's HOME"] = [home]
    for f in inputs.plan_inputs(scan.input_files, scan.extra_args):
        if not f or not os.path.lexists(f):
            continue  # nothing to grant; the auditor reports the missing file
        if not inputs.regular_file(f):
            raise SandboxUnavailable(
                f"input file {f!r} is not a regular file: a directory (or device, fifo, "
                "socket) is never granted to the auditor"
            )
        _refuse_inside(f, "input file", off_limits, "scanfleet")


def _refuse_inside(path: str, what: str, off_limits: dict[str, list[str]], ours: str) -> None:
    """SandboxUnavailable when `path` (resolved) is or lies inside one of `off_limits`, or
    inside an entry of the temp root whose name starts with `ours`."""
    real = os.path.realpath(path)
    for where, roots in off_limits.items():
        for root in map(os.path.realpath, roots):
            if real == root or _below(real, root):
                raise SandboxUnavailable(
                    f"{what} {path!r} lies inside {where} ({root}); the auditor is "
                    "never granted files there: copy it elsewhere"
                )
    tmp = os.path.realpath(tempfile.gettempdir())
    first = os.path.relpath(real, tmp).split(os.sep)[0] if _below(real, tmp) else ""
    if first.startswith(ours):
        raise SandboxUnavailable(
            f"{what} {path!r} lies inside {os.path.join(tmp, first)}, scanfleet's own "
            "(another scan's directory, the profile cache); it is never granted"
        )


def _ports(kubeconfig: Path, env: Mapping[str, str]) -> set[int]:
    """The API server's port (only the server URL of the kubeconfig is looked at)."""
    ports: set[int] = set()
    try:
        doc = yaml.load(kubeconfig.read_text(), Loader=_YAML_LOADER)  # noqa: S506 (safe)
    except (OSError, yaml.YAMLError):
        doc = None
    clusters = doc.get("clusters") if isinstance(doc, dict) else None
    for entry in clusters if isinstance(clusters, list) else []:
        cluster = entry.get("cluster") if isinstance(entry, dict) else None
        if isinstance(cluster, dict) and isinstance(cluster.get("server"), str):
            ports |= _url_port(cluster["server"])
    for name in ("HTTPS_PROXY", "https_proxy"):
        if env.get(name):
            ports |= _url_port(env[name] if "://" in env[name] else f"http://{env[name]}")
    return ports


def _url_port(url: str) -> set[int]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return set()
    if port is None:
        port = {"https": 443, "http": 80}.get(parts.scheme)
    return {port} if port else set()


def _refuse_exposure(
    policy: Policy, config: SandboxSettings, scan: Scan, worker_env: Mapping[str, str]
) -> None:
    """Refuse a policy whose rules would expose a protected path or another scan."""
    home = Path(worker_env.get("HOME") or os.path.expanduser("~"))
    guarded = [
        *config.protect,
        home / ".kube",
        *(Path(p) for p in worker_env.get("KUBECONFIG", "").split(os.pathsep) if p),
        *([config.broker_url_file] if config.broker_url_file else []),
    ]
    not_contained = [Path(tempfile.gettempdir()), scan.results_dir]
    if home != Path("/"):
        not_contained.append(home)
    # Resolved once per scan, compared as strings: both sides are absolute real paths.
    guarded_real = list(dict.fromkeys(os.path.realpath(p) for p in guarded))
    contained_real = list(dict.fromkeys(os.path.realpath(p) for p in not_contained))
    rules = [(p, "read") for p in policy.read] + [(p, "write") for p in policy.write]
    for rule, how in rules:
        for g in guarded_real:
            if rule == g or _below(rule, g) or _below(g, rule):
                raise SandboxUnavailable(
                    f"sandbox {how} rule {rule} would expose the protected path {g}; "
                    f"narrow {ALLOW_READ_ENV}/{ALLOW_WRITE_ENV} or move the file"
                )
        for c in contained_real:
            if rule == c or _below(c, rule):
                raise SandboxUnavailable(
                    f"sandbox {how} rule {rule} would contain {c} (other scans, results "
                    "or the worker's home); allow narrower paths"
                )


def _below(path: str, root: str) -> bool:
    """`path` lies strictly inside `root` (both absolute and normalised)."""
    return path != root and path.startswith(root.rstrip("/") + "/")
