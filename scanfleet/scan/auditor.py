"""The auditor adapter: the one seam through which scanfleet runs CINC Auditor.

`run_auditor` runs

    AUDITOR exec PROFILE -t k8s-container://NS/POD/CONTAINER --reporter json:REPORT
            [--input-file F]... [EXTRA...]

with `KUBECONFIG` pointing at the scan's throwaway kubeconfig, inside the auditor sandbox
(`scanfleet.sandbox.policy`: Landlock, no capabilities, no_new_privs, death with its parent,
applied between fork and exec by this process's launcher, `scanfleet.sandbox.forkserver`).
REPORT, HOME and TMPDIR lie in the scan's private directory; a completed report is
rewritten into the results by scanfleet. It waits with a timeout and maps the outcome onto
the error tree: exit 0 / 100 / 101 (all passed / some failed / some skipped) is a completed
audit; any other exit is `AuditorFailed`
carrying the redacted last 2 KB of stderr; a missing executable is `AuditorMissing`; a
timeout is `ScanTimeout`; a sandbox that cannot be applied is `SandboxUnavailable`.

What it must never do:
- run a shell: the argv is a list, so a profile or target holding `;` or `$(...)` is one
  literal argument;
- run the auditor unconfined unless the operator said SCANFLEET_SANDBOX=off (then it warns
  on every scan); without Landlock it raises SandboxUnavailable and starts nothing;
- leak credentials: the auditor's environment is built from an allowlist (see
  `auditor_environment`), `KUBECONFIG` is the temp kubeconfig path and nothing else, and the
  kubeconfig's *content* is never read, logged or put in a message; stderr is redacted
  before it reaches an error message;
- leave processes behind: the auditor runs in its own process group (session), and on
  timeout, on any interruption of the waiting thread (KeyboardInterrupt, a ScanInterrupted
  raised by a signal handler, ...) and after a normal exit (stragglers such as a leftover
  `kubectl exec`) the whole group gets SIGTERM, then SIGKILL after `kill_grace` seconds
  (`scanfleet.sandbox.procgroup`).
  A process that leaves the group on purpose (setsid, double fork) is still a descendant of
  the scan's supervisor, a subreaper that kills it when the audit ends
  (`scanfleet.sandbox.forkserver`).
- hold unbounded output in memory: stdout is discarded (the report goes to a file) and only
  the tail of stderr is kept.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from scanfleet.core.errors import (
    AuditorFailed,
    AuditorMissing,
    InvalidReport,
    ScanInterrupted,
    ScanTimeout,
)
from scanfleet.core.logs import redact_text
from scanfleet.core.settings import SandboxSettings, Settings
from scanfleet.core.targets import Target
from scanfleet.core.textsafe import strip_controls
from scanfleet.sandbox.policy import (
    ExecFailed,
    Policy,
    Scan,
    WorkDir,
    activate,
    build_policy,
    prepare_workdir,
    spawn,
)
from scanfleet.sandbox.procgroup import signal_name, terminate_group
from scanfleet.sandbox.reaper import hold, record_auditor
from scanfleet.sandbox.spawn import AuditorProcess
from scanfleet.store.files import PRIVATE, Modes, copy_report, result_modes

COMPLETED_EXIT_CODES = frozenset({0, 100, 101})
"""InSpec's distinct exit codes: 0 all passed, 100 some failed, 101 some skipped."""

STDERR_TAIL_BYTES = 2048
# Redact a wider window than we keep, so a token cut by the window edge is still whole
# (service account JWTs are ~1 KB) when the redaction pattern looks at it.
_STDERR_WINDOW_BYTES = 8 * STDERR_TAIL_BYTES
_READ_CHUNK = 64 * 1024
_POLL_MAX_S = 0.05

# Environment passed to the auditor: only what a Ruby CLI, its k8s transport and the
# kubectl it may call need. Everything else is dropped, because the parent (a worker)
# holds things the auditor must not reach: the admin KUBECONFIG, the broker URL (may carry
# a Redis password), cloud credentials (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, AZURE_*),
# tokens of any kind.
_ENV_ALLOW_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "TERM",
        "TZ",
        "LANG",
        "LANGUAGE",
        "TMPDIR",
        "TMP",
        "TEMP",
        # Reaching the API server through a corporate proxy / custom CA bundle.
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        # Ruby gem locations (where the train-k8s-container plugin may live).
        "GEM_HOME",
        "GEM_PATH",
    }
)
_ENV_ALLOW_PREFIXES = (
    "LC_",
    # CINC / InSpec / Train settings (e.g. CHEF_LICENSE, INSPEC_CONFIG_DIR).
    "CINC_",
    "INSPEC_",
    "CHEF_",
    "TRAIN_",
    # Behaviour switches of the test stand-in (scanfleet/testing/standin/cinc-auditor): paths and
    # numbers, never credentials.
    "SCANFLEET_STANDIN_",
)
# Even an allowed name is dropped if it looks like it holds a secret.
_ENV_SECRET_NAME = re.compile(
    r"(TOKEN|SECRET|PASSW|CREDENTIAL|API_?KEY|PRIVATE|AUTH)", re.IGNORECASE
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Host:
    """This process's side of every audit, read once (settings.py) and passed down: the
    sandbox settings, the environment the auditor's allowlist is filtered from, the
    results' file modes, and `stop`, which makes every audit waiting on this host end.

    A signal handler can only raise in the main thread; an in-process run with a thread
    pool (`submit --local`) sets `stop` so audits in the other threads end promptly too,
    with `ScanInterrupted`, and their identities are revoked.
    """

    sandbox: SandboxSettings = field(default_factory=SandboxSettings)
    environment: Mapping[str, str] = field(default_factory=dict, repr=False)
    modes: Modes = PRIVATE
    stop: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Host:
        return cls(
            settings.sandbox, settings.environment, result_modes(settings.results_group_read)
        )


@dataclass(frozen=True)
class AuditResult:
    """A completed audit: exit code 0, 100 or 101, and how long it took."""

    exit_code: int
    duration_s: float


def build_argv(
    auditor: str,
    profile: str,
    target: Target,
    report_path: Path,
    input_files: Sequence[Path | str] = (),
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The auditor command line, as a list (never a shell string)."""
    if target.container is None:
        raise ValueError(f"target {target.ref} has no container; resolve it before auditing")
    argv = [
        auditor,
        "exec",
        profile,
        "-t",
        f"k8s-container://{target.namespace}/{target.pod}/{target.container}",
        "--reporter",
        f"json:{report_path}",
    ]
    for f in input_files:
        argv += ["--input-file", str(f)]
    argv += list(extra_args)
    return argv


def auditor_environment(
    kubeconfig: Path,
    base: Mapping[str, str],
    *,
    workdir: WorkDir | None = None,
) -> dict[str, str]:
    """The auditor's environment: an allowlisted copy of `base` plus KUBECONFIG.

    Kept: PATH, HOME, user and locale variables, temp dirs, proxy and CA-bundle variables
    (the transport must reach the API server the way the worker does), Ruby gem paths, and
    variables prefixed CINC_/INSPEC_/CHEF_/TRAIN_/SCANFLEET_STANDIN_. Dropped: everything
    else, and any kept name that looks like a secret (TOKEN, SECRET, PASSWORD, CREDENTIAL,
    API_KEY, PRIVATE, AUTH). In particular every KUBECONFIG-like variable of the parent
    (KUBECONFIG, SCANFLEET_*KUBECONFIG) is dropped, and KUBECONFIG is set to the temp
    kubeconfig path alone, so the auditor and any kubectl it runs see only the scan's
    least-privilege identity. A proxy URL may carry proxy credentials; it is kept because
    without it the cluster is unreachable.

    With `workdir` (the scan's private work dir), HOME and TMPDIR point into it, and
    INSPEC_CONFIG_DIR is passed only when the operator set it: the worker's ~/.inspec (which
    can hold Automate or compliance tokens) is never granted implicitly; install plugins
    under an INSPEC_CONFIG_DIR of their own (the worker image does).
    """
    env = {
        k: v
        for k, v in base.items()
        if (k in _ENV_ALLOW_NAMES or k.startswith(_ENV_ALLOW_PREFIXES))
        and not _ENV_SECRET_NAME.search(k)
        and "KUBECONFIG" not in k.upper()
    }
    env["KUBECONFIG"] = str(kubeconfig)
    if workdir is not None:
        env["HOME"] = str(workdir.home)
        env["TMPDIR"] = str(workdir.tmp)
    return env


def run_auditor(
    auditor: str,
    profile: str,
    target: Target,
    report_path: Path,
    kubeconfig: Path,
    *,
    input_files: Sequence[Path | str] = (),
    extra_args: Sequence[str] = (),
    timeout: float,
    kill_grace: float = 10.0,
    host: Host,
) -> AuditResult:
    """Run the auditor against one target, in its sandbox, and wait for it.

    The auditor writes its report into the scan's private directory (the kubeconfig's);
    after a completed audit scanfleet rewrites it to `report_path` with the results' file
    mode. `host` gives the sandbox settings, the base environment that
    `auditor_environment` filters, the file modes and the stop event.
    Raises SandboxUnavailable, AuditorMissing, AuditorFailed, InvalidReport or ScanTimeout;
    any BaseException raised in the waiting thread (KeyboardInterrupt, ScanInterrupted from
    a signal handler) terminates the process group and is re-raised unchanged.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    launch = _prepare(
        auditor, profile, target, report_path, kubeconfig, input_files, extra_args, host
    )
    with hold(kubeconfig.parent):
        started = time.monotonic()
        try:
            proc = spawn(launch.policy, launch.argv, launch.env)
        except ExecFailed as e:
            raise AuditorMissing(_missing_message(auditor, str(e))) from e
        record_auditor(kubeconfig.parent, proc.pid)
        log.info(
            "auditor.started",
            pid=proc.pid,
            argv=launch.argv,
            sandbox=launch.mode,
            kubeconfig_path=str(kubeconfig),
        )
        exit_code, stderr_tail = _supervise(
            proc, target, started + timeout, timeout, kill_grace, host.stop
        )
        duration = time.monotonic() - started
        log.info("auditor.finished", pid=proc.pid, exit_code=exit_code, duration_s=duration)
        if proc.lost:
            raise AuditorFailed(
                "the auditor launcher exited during the audit and the "
                "auditor was killed with it; the next scan starts a new one"
            )
        if exit_code not in COMPLETED_EXIT_CODES:
            how = f" (killed by {signal_name(-exit_code)})" if exit_code < 0 else ""
            raise AuditorFailed(f"auditor exited with code {exit_code}{how}: {stderr_tail}")
        report = launch.work.report
        if report.exists() or report.is_symlink():
            try:
                copy_report(report, report_path, host.modes)
            except ValueError as e:
                raise InvalidReport(f"the auditor's report cannot be used: {e}") from e
    return AuditResult(exit_code=exit_code, duration_s=duration)


@dataclass(frozen=True)
class _Launch:
    argv: list[str]
    env: dict[str, str]
    policy: Policy
    work: WorkDir
    mode: str


def _prepare(
    auditor: str,
    profile: str,
    target: Target,
    report_path: Path,
    kubeconfig: Path,
    input_files: Sequence[Path | str],
    extra_args: Sequence[str],
    host: Host,
) -> _Launch:
    """Sandbox mode, private work dir, argv, environment and policy of one audit."""
    config = host.sandbox
    mode = activate(config)  # no Landlock and not opted out: nothing runs
    work = prepare_workdir(kubeconfig.parent)
    argv = build_argv(auditor, profile, target, work.report, input_files, extra_args)
    child_env = auditor_environment(kubeconfig, host.environment, workdir=work)
    executable = shutil.which(auditor, path=child_env.get("PATH", os.defpath))
    if executable is None:
        raise AuditorMissing(_missing_message(auditor, "No such file or directory"))
    scan = Scan(executable, profile, kubeconfig, work, report_path.parent, input_files, extra_args)
    policy = build_policy(config, scan, child_env, host.environment)
    return _Launch(argv, child_env, policy, work, mode)


def _missing_message(auditor: str, why: str) -> str:
    return (
        f"auditor executable {auditor!r} cannot be run ({why}): "
        "set SCANFLEET_AUDITOR to the cinc-auditor executable or install cinc-auditor"
    )


def _supervise(
    proc: AuditorProcess,
    target: Target,
    deadline: float,
    timeout: float,
    kill_grace: float,
    stop: threading.Event,
) -> tuple[int, str]:
    """Wait for the auditor; its exit code and redacted stderr tail. The group never
    outlives this call."""
    try:
        tail = _StderrTail(proc)
        exit_code = _wait(proc, deadline, stop)
    except BaseException:
        log.warning("auditor.interrupted", pid=proc.pid)
        terminate_group(proc, kill_grace)
        raise
    if exit_code is None:
        log.warning("auditor.timeout", pid=proc.pid, timeout_s=timeout)
        terminate_group(proc, kill_grace)
        raise ScanTimeout(
            f"auditor timed out after {timeout:g} s on {target.ref}; "
            "its process group was terminated"
        )
    # The leader is done; anything it left in its group (a kubectl exec, ...) goes too.
    terminate_group(proc, kill_grace)
    return exit_code, tail.text()


def _wait(proc: AuditorProcess, deadline: float, stop: threading.Event) -> int | None:
    """Wait for the leader until `deadline` (monotonic); its exit code, or None on timeout.

    Polls with short sleeps rather than blocking in waitpid, so a signal handler in the
    main thread runs promptly and its exception reaches the caller's cleanup.
    """
    delay = 0.001
    while True:
        code = proc.poll()
        if code is not None:
            return code
        if stop.is_set():
            raise ScanInterrupted("interrupted: the run is stopping")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, _POLL_MAX_S)


class _StderrTail:
    """Reads a pipe to EOF in a daemon thread, keeping only its last bytes."""

    def __init__(self, proc: AuditorProcess) -> None:
        assert proc.stderr is not None
        self._pipe = proc.stderr
        self._buf = bytearray()
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._pump, name=f"auditor-stderr-{proc.pid}", daemon=True
        )
        self._thread.start()

    def _pump(self) -> None:
        try:
            fd = self._pipe.fileno()
            while chunk := os.read(fd, _READ_CHUNK):
                with self._lock:
                    self._buf += chunk
                    if len(self._buf) > _STDERR_WINDOW_BYTES:
                        del self._buf[: len(self._buf) - _STDERR_WINDOW_BYTES]
        except (OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError):
                self._pipe.close()

    def text(self, join_timeout: float = 2.0) -> str:
        """The redacted last 2 KB of stderr (waits briefly for the pipe to drain)."""
        # The group is gone by now, so EOF is imminent; a process that escaped the group
        # and holds the pipe must not hang the scan, hence the bounded join.
        self._thread.join(join_timeout)
        with self._lock:
            raw = bytes(self._buf)
        # Container-derived text: no escape sequences, control or bidi characters either.
        text = strip_controls(redact_text(raw.decode("utf-8", errors="replace")))
        tail = text.encode("utf-8")[-STDERR_TAIL_BYTES:].decode("utf-8", errors="ignore")
        return tail.strip()
