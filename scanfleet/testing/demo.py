"""`scanfleet demo`: the whole job against a simulated cluster, in under a minute.

It starts a simulated API server in this process (`fakekube.FakeCluster`: HTTPS, RBAC,
TokenRequest, exec) seeded with `FLEET`, writes the stand-in auditor's launcher and a plan
that gives each pod a real public STIG/CIS report (`samples/reports`, see SOURCES.md) or an
auditor failure, and then runs the same commands a user runs against a real cluster, as
child processes of this interpreter: `scanfleet submit --all-namespaces ... --local`, or
with a broker `scanfleet worker` plus `scanfleet submit --wait`. So the run goes through the
real pipeline: one throwaway identity per scan, the auditor sandbox (on unless the user set
SCANFLEET_SANDBOX=off), the threshold and the fleet threshold in `samples/`.

What it must never do: read or write the user's ~/.kube or talk to a real cluster (the
children get KUBECONFIG and --kubeconfig of the simulated cluster only, and none of the
user's SCANFLEET_* settings but the sandbox switch); leave processes behind (the worker is
stopped, by its process group, in every outcome); put the admin kubeconfig where the
sandboxed auditor may read it (its directory is separate from the launcher's).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from scanfleet.core.errors import BadInput
from scanfleet.core.settings import environment_snapshot
from scanfleet.reports import write_report
from scanfleet.store.files import iter_summaries, run_dir
from scanfleet.testing.auditor import SAMPLES, report, standin_auditor
from scanfleet.testing.cluster import SimulatedCluster, simulated_cluster

CONTEXT = "demo"
PROFILE = SAMPLES / "profile"
THRESHOLD = SAMPLES / "threshold.yml"
FLEET_THRESHOLD = SAMPLES / "fleet-threshold.yml"
DEFAULT_RESULTS_DIR = Path("scanfleet-demo")
RUN_DEADLINE_S = 300.0
BROKER_CONNECT_S = 5.0
WORKER_STOP_S = 20.0

UNREACHABLE_CONTAINER = (
    "stand-in: exec into the container failed: OCI runtime exec failed: "
    'exec: "/bin/sh": stat /bin/sh: no such file or directory'
)

FLEET: dict[str, dict[str, str | None]] = {
    # namespace -> pod -> bundled report (None: the auditor fails on that container)
    "payments": {
        "api": "red_hat_good.json",
        "ledger": "red_hat_good.json",
        "db": "rhel8_sample_oneOfEachControlStatus.json",
    },
    "storefront": {
        "web": "inspec_fixture_json_output.json",
        "checkout": "red_hat_good.json",
        "search": "minimal_hdf.json",
    },
    "legacy": {
        "billing": "wrapper-acme-run.json",
        "ftp": None,
    },
}
"""3 namespaces, 8 pods: with samples/threshold.yml four meet it, three miss, one errors."""

NEXT_STEPS = """\
Next, against a real cluster (your current kubeconfig context):
  scanfleet submit --all-namespaces --local --profile \\
    https://github.com/mitre/redhat-enterprise-linux-8-stig-baseline/archive/main.tar.gz \\
    --threshold examples/threshold.yml --fleet-threshold examples/fleet-threshold.yml
(cinc-auditor with the train-k8s-container-mitre plugin and kubectl on PATH; README.md)"""


class DemoFailed(Exception):
    """The demo could not produce a run (not a run that missed its threshold)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class DemoResult:
    run_id: str
    exit_code: int
    """The run's exit code, from run.json (SPEC §5: 0 met, 1 missed, 3 errors)."""
    run_dir: Path
    html: Path
    summary: list[str]
    """What `submit` printed after the run id: the run's summary lines."""
    identities: int
    """Scan tokens the simulated API server issued (one throwaway identity per scan)."""
    leftovers: int
    """scanfleet RBAC objects left in the cluster afterwards (0 is right)."""
    log: Path
    seconds: float


def check_broker(url: str) -> str:
    """A redis:// or rediss:// URL with a host; BadInput naming it (without credentials)."""
    scheme, sep, rest = url.partition("://")
    shown = f"{scheme}{sep}{rest.rpartition('@')[2]}"  # no user:password@, even if malformed
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError as e:
        raise BadInput(f"--broker {shown!r} is not a valid URL: {e}") from None
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise BadInput(f"--broker {shown!r} must be a redis://HOST[:PORT][/DB] or rediss:// URL")
    return url


def reach_broker(url: str, timeout: float = BROKER_CONNECT_S) -> None:
    """Open (and close) a TCP connection to the broker's host:port, so an unreachable Redis
    is one line and exit 3 in seconds, before anything starts (`submit` would retry)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "localhost", parts.port or 6379
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise DemoFailed(f"cannot reach the broker at {host}:{port}: {why}", 3) from None


def plan() -> dict[str, dict[str, Any]]:
    """The stand-in's plan: each pod's report, or the failure of the one that errors."""
    out: dict[str, dict[str, Any]] = {}
    for namespace, pods in FLEET.items():
        for pod, sample in pods.items():
            key = f"{namespace}/{pod}"
            if sample is None:
                out[key] = {"exit": 1, "stderr": UNREACHABLE_CONTAINER + "\n"}
            else:
                out[key] = {"report": str(report(sample))}
    return out


def child_environment(
    sim: SimulatedCluster,
    auditor_env: Mapping[str, str],
    results_dir: Path,
    broker: str | None,
    base: Mapping[str, str],
) -> dict[str, str]:
    """The children's environment: the user's, without KUBECONFIG and scanfleet settings
    (the sandbox switch kept), plus the simulated cluster's and the stand-in's."""
    keep = ("SCANFLEET_SANDBOX", "SCANFLEET_SANDBOX_PROTECT")
    env = {
        k: v
        for k, v in base.items()
        if k != "KUBECONFIG" and (not k.startswith("SCANFLEET_") or k in keep)
    }
    env.update(sim.env)
    env.update(auditor_env)
    env["SCANFLEET_RESULTS_DIR"] = str(results_dir)
    env["SCANFLEET_LOG_FORMAT"] = "json"
    if broker is not None:
        env["SCANFLEET_BROKER_URL"] = broker
        env["SCANFLEET_KEY_PREFIX"] = "scanfleet-demo"
    return env


def scanfleet_argv(*args: str) -> list[str]:
    """`scanfleet ARGS` with this interpreter (the installation the demo runs from)."""
    return [sys.executable, "-c", "from scanfleet.cli import main; main()", *args]


def submit_args(sim: SimulatedCluster, results_dir: Path, broker: str | None) -> list[str]:
    args = [
        "submit",
        "--kubeconfig",
        str(sim.kubeconfig),
        "--context",
        sim.context,
        "--all-namespaces",
        "--profile",
        str(PROFILE),
        "--threshold",
        str(THRESHOLD),
        "--fleet-threshold",
        str(FLEET_THRESHOLD),
        "--output",
        str(results_dir),
    ]
    return [*args, "--wait"] if broker is not None else [*args, "--local", "--concurrency", "4"]


def run_demo(
    results_dir: Path = DEFAULT_RESULTS_DIR,
    *,
    broker: str | None = None,
    on_line: Callable[[str], None] = lambda _line: None,
) -> DemoResult:
    """Run the demo; `on_line` gets each line `submit` prints (the run id first).

    Raises DemoFailed when no run came out of it (the log file says why).
    """
    started = time.monotonic()
    if broker is not None:
        reach_broker(broker)
    results_dir = results_dir.absolute()
    results_dir.mkdir(parents=True, exist_ok=True)
    log = results_dir / "demo.log"
    pods = {ns: list(p) for ns, p in FLEET.items()}
    with (
        tempfile.TemporaryDirectory(prefix="scanfleet-demo-") as tmp,
        simulated_cluster(pods, directory=Path(tmp) / "kube", context=CONTEXT) as sim,
        standin_auditor(Path(tmp) / "standin", plan=plan(), use_kubectl=False) as auditor,
        log.open("w") as log_file,
    ):
        env = child_environment(sim, auditor.env, results_dir, broker, environment_snapshot())
        argv = scanfleet_argv(*submit_args(sim, results_dir, broker))
        with worker(env, log_file, broker) as guard:
            code, lines = _submit(argv, env, log_file, on_line, guard)
        identities = len(sim.cluster.issued_tokens)
        leftovers = len(sim.cluster.scanfleet_objects())
    if not lines:
        why = _last_error(log)
        raise DemoFailed(
            f"scanfleet submit exited with code {code} before a run started"
            + (f": {why}" if why else ""),
            code,
        )
    run_id = lines[0].strip()
    directory = run_dir(results_dir, run_id)
    run = _finished_run(directory, code)
    html = directory / "report.html"
    with html.open("w", encoding="utf-8") as f:
        write_report("html", run, lambda: iter_summaries(directory), f)
    return DemoResult(
        run_id=run_id,
        exit_code=int(run["exit_code"]),
        run_dir=directory,
        html=html,
        summary=lines[1:],
        identities=identities,
        leftovers=leftovers,
        log=log,
        seconds=time.monotonic() - started,
    )


class Guard:
    """Stops `submit` when the run cannot finish: its worker died, or RUN_DEADLINE_S passed."""

    def __init__(self, worker: subprocess.Popen[bytes] | None) -> None:
        self.worker = worker
        self.reason: str | None = None
        self._done = threading.Event()

    def watch(self, submit: subprocess.Popen[str]) -> None:
        threading.Thread(target=self._run, args=(submit,), daemon=True).start()

    def _run(self, submit: subprocess.Popen[str]) -> None:
        deadline = time.monotonic() + RUN_DEADLINE_S
        while not self._done.wait(0.2):
            if self.worker is not None and self.worker.poll() is not None:
                self.reason = f"scanfleet worker exited with code {self.worker.returncode}"
            elif time.monotonic() > deadline:
                self.reason = f"the run did not finish within {RUN_DEADLINE_S:.0f}s"
            else:
                continue
            submit.terminate()
            return

    def stop(self) -> None:
        self._done.set()


def _submit(
    argv: list[str],
    env: dict[str, str],
    log_file: IO[str],
    on_line: Callable[[str], None],
    guard: Guard,
) -> tuple[int, list[str]]:
    """Run `submit`, passing its stdout lines on as they come; its stderr goes to the log."""
    lines: list[str] = []
    with subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=log_file, stdin=subprocess.DEVNULL, text=True
    ) as proc:
        assert proc.stdout is not None
        guard.watch(proc)
        try:
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                on_line(lines[-1])
            code = proc.wait(timeout=RUN_DEADLINE_S)
        except BaseException:
            proc.terminate()
            proc.wait(timeout=WORKER_STOP_S)
            raise
        finally:
            guard.stop()
    if guard.reason is not None:
        raise DemoFailed(guard.reason, 3)
    return code, lines


def _last_error(log: Path) -> str | None:
    """The last `scanfleet: error: ...` line the children wrote, without the prefix."""
    prefix = "scanfleet: error: "
    found = [line for line in log.read_text(errors="replace").splitlines() if prefix in line]
    return found[-1].split(prefix, 1)[1].strip() if found else None


def _finished_run(directory: Path, submit_code: int) -> dict[str, Any]:
    path = directory / "run.json"
    try:
        run = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DemoFailed(
            f"scanfleet submit exited with code {submit_code} and wrote no run summary ({e})",
            submit_code or 3,
        ) from e
    if not isinstance(run, dict) or "exit_code" not in run:
        raise DemoFailed(f"{path} is not a run summary", 3)
    return run


@contextmanager
def worker(env: dict[str, str], log_file: IO[str], broker: str | None) -> Iterator[Guard]:
    """With a broker: a `scanfleet worker` for the run's scans, stopped (SIGTERM to its
    process group, SIGKILL after WORKER_STOP_S) when the block ends. Without: no worker."""
    if broker is None:
        yield Guard(None)
        return
    proc = subprocess.Popen(
        scanfleet_argv("worker", "--concurrency", "4", "--loglevel", "WARNING"),
        env=env,
        stdout=log_file,
        stderr=log_file,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield Guard(proc)
    finally:
        _stop_group(proc)
    if proc.returncode not in (0, -signal.SIGTERM):
        log_file.write(f"\nscanfleet worker exited with code {proc.returncode}\n")


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=WORKER_STOP_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with contextlib.suppress(ProcessLookupError):  # the pool's children, if any are left
        os.killpg(proc.pid, signal.SIGKILL)
