"""The sandbox on every driver: `submit --local` and a real `scanfleet worker`, not only `scan`.

The hostile stand-in auditor (scanfleet/testing/standin/hostile-auditor) probes the admin
kubeconfig,
~/.kube/config, a service account token, another scan's directory, /proc/<parent>/environ,
a Redis the test starts (TCP and MPTCP), binding (TCP and MPTCP), a port that is not the
API server's and signalling its parent. With the sandbox on every probe fails and the
scans complete; with SCANFLEET_SANDBOX=off the same probes succeed (so the tests can fail).
Either way the double-forked `setsid` sleeper it leaves is gone within 2 s of the scan's
end. Also: the mode is recorded in run.json, `scan`/`submit --local`/`worker` refuse to
start without Landlock (exit 3, nothing created) unless opted out, a worker clears what
dead workers left, and a worker rejects input files a Redis writer added.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from scanfleet.cli import fleet as _register_fleet  # noqa: F401
from scanfleet.cli import main_group
from scanfleet.cli import scan as _register_scan  # noqa: F401
from scanfleet.core.settings import Settings
from scanfleet.sandbox import policy, reaper
from scanfleet.store.files import iter_summaries
from scanfleet.testing.fakekube import FakeCluster
from tests.support.fixtures_auditor import STANDIN
from tests.support.fixtures_fleet import KEY_PREFIX, FleetClusters, RedisServer, run_cli, wait_for
from tests.support.tools import alive

HOSTILE = STANDIN.with_name("hostile-auditor")
PROBES = (
    "admin_kubeconfig",
    "home_kube",
    "sa_token",
    "other_scan",
    "parent_environ",
    "redis",
    "other_port",
    "bind",
    "signal_parent",
    "mptcp_connect",
    "mptcp_bind",
)
MODE = f"landlock-abi-{policy.abi_version()}"


def hostile_world(
    tmp_path: Path,
    admin: Path,
    redis_port: int,
    other_port: int,
    probes: Path,
    scanfleet_pid: int | None = None,
) -> dict[str, str]:
    """Secrets for the auditor to go after, and the environment that points it at them.

    The auditor's parent is its supervisor, a fork of the launcher (an empty environment);
    the scanfleet process whose environment matters is `scanfleet_pid` where the test
    knows it (in-process runs). Without it (a worker started later) the environ probe reads
    the supervisor's, which is empty whether or not the sandbox is on (`EMPTY_LAUNCHER`)."""
    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    (home / ".kube" / "config").write_text("token: the-operators-own-token\n")
    secrets = tmp_path / "run-secrets"
    (secrets / "sa").mkdir(parents=True)
    (secrets / "sa" / "token").write_text("worker-sa-token\n")
    tmp = tmp_path / "tmp"  # the worker's temp root: other scans' dirs live here
    tmp.mkdir(mode=0o700)
    other = tmp / "scanfleet-otherscn"
    other.mkdir(mode=0o700)
    (other / "kubeconfig").write_text("token: another-scans-token\n")
    spec = {
        "read": {
            "admin_kubeconfig": str(admin),
            "home_kube": str(home / ".kube" / "config"),
            "sa_token": str(secrets / "sa" / "token"),
            "other_scan": str(other / "kubeconfig"),
            "parent_environ": (
                f"/proc/{scanfleet_pid}/environ" if scanfleet_pid else "/proc/{ppid}/environ"
            ),
        },
        "connect": {"redis": ["127.0.0.1", redis_port], "other_port": ["127.0.0.1", other_port]},
        "bind": True,
        "signal_parent": True,
        **({"signal": {"signal_scanfleet": scanfleet_pid}} if scanfleet_pid else {}),
        "mptcp_connect": ["127.0.0.1", redis_port],
        "mptcp_bind": True,
        "orphan": str(probes.parent / "orphan-{pid}.pid"),
    }
    return {
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "SCANFLEET_SANDBOX_PROTECT": str(secrets),
        "SCANFLEET_AUDITOR": str(HOSTILE),
        "SCANFLEET_STANDIN_HOSTILE": json.dumps(spec),
        "SCANFLEET_STANDIN_PROBES": str(probes),
    }


def assert_confined(probes: dict[str, str]) -> None:
    assert set(PROBES) <= set(probes), probes
    reached = sorted(k for k, v in probes.items() if v == "ok" and k != "orphan")
    assert reached == [], f"the sandboxed auditor reached: {reached}"


EMPTY_LAUNCHER = "denied: empty"


def mptcp_enabled() -> bool:
    """Whether this kernel creates MPTCP sockets (without the sandbox)."""
    try:
        return Path("/proc/sys/net/mptcp/enabled").read_text().strip() == "1"
    except OSError:
        return False


def assert_unconfined(probes: dict[str, str]) -> None:
    failed = {
        k: v
        for k, v in probes.items()
        if v != "ok"
        and not (k == "parent_environ" and v == EMPTY_LAUNCHER)
        and not (k.startswith("mptcp_") and not mptcp_enabled())
    }
    assert set(PROBES) <= set(probes), probes
    assert failed == {}, "without the sandbox the probes must work, or the test proves nothing"


SCAN_END_S = 2.0


def orphans(directory: Path) -> list[int]:
    """The pids of the hostile auditor's double-forked `setsid` sleepers."""
    return [int(p.read_text()) for p in sorted(directory.glob("orphan-*.pid")) if p.read_text()]


def assert_orphans_gone(directory: Path, expected: int) -> None:
    """The scan has ended: each sleeper is gone within SCAN_END_S (and killed regardless)."""
    pids = orphans(directory)
    try:
        assert len(pids) == expected, pids
        deadline = time.monotonic() + SCAN_END_S
        while any(alive(p) for p in pids):
            assert time.monotonic() < deadline, f"sleepers {pids} outlived their scan"
            time.sleep(0.02)
    finally:
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)


# --- submit --local ----------------------------------------------------------------------


@pytest.fixture
def local_submit(
    fake_cluster: FakeCluster,
    standin_auditor: str,
    standin_io: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    listener: int,
    redis_server: RedisServer,
) -> Callable[[], tuple[Any, dict[str, str], dict[str, Any]]]:
    """`submit --local` of two containers with the hostile auditor: (outcome, probes, run)."""
    import tempfile

    admin = fake_cluster.write_kubeconfig(tmp_path / "kube" / "config")
    probes = standin_io / "probes.json"
    redis_port = redis_server.port
    assert redis_port is not None
    for k, v in hostile_world(
        tmp_path, admin, redis_port, listener, probes, scanfleet_pid=os.getpid()
    ).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    monkeypatch.delenv("KUBECONFIG", raising=False)
    out = tmp_path / "results"

    def run() -> tuple[Any, dict[str, str], dict[str, Any]]:
        argv = [
            "submit",
            "--local",
            "--concurrency",
            "2",
            "apps/web/app",
            "apps/web/sidecar",
            "--profile",
            "p",
            "--kubeconfig",
            str(admin),
            "--output",
            str(out),
            "--json",
        ]
        outcome = CliRunner().invoke(main_group, argv, catch_exceptions=False)
        run_id = json.loads(outcome.stdout)["run_id"]  # --json: one document
        return (
            outcome,
            json.loads(probes.read_text()),
            json.loads((out / run_id / "run.json").read_text()),
        )

    return run


def test_submit_local_confines_every_scan_and_records_the_mode(
    local_submit: Callable[[], tuple[Any, dict[str, str], dict[str, Any]]],
    fake_cluster: FakeCluster,
    standin_io: Path,
) -> None:
    outcome, probes, run = local_submit()
    assert_orphans_gone(standin_io, 2)
    assert outcome.exit_code == 0, outcome.stderr
    assert run["targets"]["completed"] == 2
    assert run["sandbox"] == MODE
    assert_confined(probes)
    assert fake_cluster.scanfleet_objects() == []


def test_submit_local_with_the_sandbox_off_lets_the_probes_through_and_says_so(
    local_submit: Callable[[], tuple[Any, dict[str, str], dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
    standin_io: Path,
) -> None:
    monkeypatch.setenv("SCANFLEET_SANDBOX", "off")
    outcome, probes, run = local_submit()
    assert_orphans_gone(standin_io, 2)
    assert outcome.exit_code == 0, outcome.stderr
    assert run["sandbox"] == "off"
    assert_unconfined(probes)
    assert outcome.stderr.count('"sandbox.off"') == 2, "one warning per scan"


# --- no Landlock: nothing starts ------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["scan", "apps/web/app"],
        ["submit", "--local", "apps/web/app"],
    ],
)
@pytest.mark.parametrize("missing", ["landlock", "seccomp"])
def test_without_landlock_scan_and_submit_local_exit_3_having_created_nothing(
    command: list[str],
    missing: str,
    fake_cluster: FakeCluster,
    standin_auditor: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    auditor_log: Any,
) -> None:
    admin = fake_cluster.write_kubeconfig(tmp_path / "kube" / "config")
    monkeypatch.setenv("SCANFLEET_AUDITOR", standin_auditor)
    if missing == "landlock":
        monkeypatch.setattr(policy, "abi_version", lambda: 0)
    else:
        monkeypatch.setattr(policy, "seccomp_available", lambda: False)
    out = tmp_path / "results"
    argv = [*command, "--profile", "p", "--kubeconfig", str(admin), "--output", str(out)]
    r = CliRunner().invoke(main_group, argv)
    assert r.exit_code == 3, r.output
    assert "[sandbox_unavailable]" in r.stderr
    assert ("Landlock" if missing == "landlock" else "seccomp") in r.stderr
    assert "SCANFLEET_SANDBOX=off" in r.stderr
    assert r.stdout == ""  # no run id: no run
    assert not out.exists()
    assert fake_cluster.scanfleet_objects() == []
    assert auditor_log() == []
    monkeypatch.setenv("SCANFLEET_SANDBOX", "off")
    r = CliRunner().invoke(main_group, argv)
    assert r.exit_code == 0, r.output
    assert '"sandbox.off"' in r.stderr


def test_without_landlock_a_worker_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setattr(policy, "abi_version", lambda: 0)
    monkeypatch.setenv("SCANFLEET_BROKER_URL", "redis://127.0.0.1:1/0")
    r = CliRunner().invoke(main_group, ["worker"])
    assert r.exit_code == 3, r.output
    assert "[sandbox_unavailable]" in r.stderr
    assert "the worker did not start" in r.stderr


def test_settings_are_the_only_reader_of_the_sandbox_variables() -> None:
    s = Settings.from_env(
        {
            "SCANFLEET_SANDBOX": "off",
            "SCANFLEET_SANDBOX_ALLOW_READ": f"/a{os.pathsep}/b",
            "SCANFLEET_SANDBOX_ALLOW_WRITE": "/w",
            "SCANFLEET_SANDBOX_PROTECT": "/p",
            "SCANFLEET_RESULTS_GROUP_READ": "1",
        }
    )
    assert not s.sandbox.enabled
    assert s.sandbox.allow_read == (Path("/a"), Path("/b"))
    assert s.sandbox.allow_write == (Path("/w"),)
    assert s.sandbox.protect == (Path("/p"),)
    assert s.results_group_read
    assert Settings.from_env({}).sandbox.enabled
    assert not Settings.from_env({}).results_group_read


# --- stale scan directories ---------------------------------------------------------------


def test_reaping_leaves_directories_that_are_not_a_scans(tmp_path: Path) -> None:
    old = time.time() - 2 * reaper.MIN_AGE_S
    metrics_dir = tmp_path / "scanfleet-metrics-abc123"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"\0")
    results_dir = tmp_path / "scanfleet-results"
    (results_dir / "20200101T000000Z-000000").mkdir(parents=True)
    scan = tmp_path / "scanfleet-k2j4h5g6"
    (scan / "auditor").mkdir(parents=True)
    (scan / "kubeconfig").write_text("token: x\n")
    for d in (metrics_dir, results_dir, scan):
        os.utime(d, (old, old))
    assert reaper.reap_stale(tmp_path) == [scan]
    assert metrics_dir.exists()
    assert results_dir.exists()


# --- a real worker ------------------------------------------------------------------------


@pytest.fixture
def hostile_fleet(
    fleet_env: dict[str, str],
    fleet_clusters: FleetClusters,
    redis_server: RedisServer,
    standin_io: Path,
    tmp_path: Path,
    listener: int,
) -> tuple[dict[str, str], Path]:
    """The fleet's environment with the hostile auditor, and its probes file."""
    probes = standin_io / "probes.json"
    assert redis_server.port is not None
    env = {
        **fleet_env,
        **hostile_world(tmp_path, fleet_clusters.kubeconfig, redis_server.port, listener, probes),
    }
    return env, probes


def _fleet_run(env: dict[str, str], probes: Path) -> tuple[dict[str, Any], dict[str, str]]:
    proc = run_cli(
        ["submit", "--context", "east", "apps/web/app", "--profile", "p", "--wait", "--json"], env
    )
    assert proc.returncode == 0, proc.stderr
    run = json.loads(proc.stdout[proc.stdout.index("{") :])
    return run, json.loads(probes.read_text())


def test_a_worker_confines_its_auditors_and_reaps_what_dead_workers_left(
    hostile_fleet: tuple[dict[str, str], Path],
    make_worker: Callable[..., Any],
    fleet_clusters: FleetClusters,
) -> None:
    env, probes = hostile_fleet
    stale = Path(env["TMPDIR"]) / "scanfleet-deadwrkr"
    stale.mkdir(mode=0o700)
    (stale / "kubeconfig").write_text("token: a-dead-workers-token\n")
    (stale / reaper.RECORD).write_text("999999999 1\n")  # its auditor is long gone
    worker = make_worker(env)
    assert not stale.exists(), "a worker removes a dead worker's scan directory at start"
    assert b'"worker.sandbox"' in worker.log.read_bytes()
    run, outcome = _fleet_run(env, probes)
    assert_orphans_gone(probes.parent, 1)
    assert run["targets"]["completed"] == 1, run
    assert run["sandbox"] == MODE
    assert_confined(outcome)
    assert fleet_clusters.east.scanfleet_objects() == []


def test_a_worker_with_the_sandbox_off_lets_the_probes_through(
    hostile_fleet: tuple[dict[str, str], Path],
    make_worker: Callable[..., Any],
) -> None:
    env, probes = hostile_fleet
    env["SCANFLEET_SANDBOX"] = "off"
    worker = make_worker(env)
    run, outcome = _fleet_run(env, probes)
    assert_orphans_gone(probes.parent, 1)
    assert run["targets"]["completed"] == 1, run
    assert run["sandbox"] == "off"
    assert_unconfined(outcome)
    assert outcome["signal_parent"] == "ok"  # the launcher: what the sandbox scope stops
    wait_for(lambda: b'"sandbox.off"' in worker.log.read_bytes(), 10, "the sandbox.off warning")


# --- inputs are the operator's, not Redis's -----------------------------------------------


def test_a_worker_rejects_inputs_a_redis_writer_added_and_starts_no_auditor(
    fleet_env: dict[str, str],
    redis_server: RedisServer,
    make_worker: Callable[..., Any],
    standin_io: Path,
    tmp_path: Path,
) -> None:
    """A plan edited in Redis to hand the auditor a cloud-credentials directory and another
    run's results ends `rejected` with no auditor started; an input under
    SCANFLEET_ALLOWED_INPUTS still reaches the auditor."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "ok.yml").write_text("x: 1\n")
    aws = tmp_path / "operator-home" / ".aws"  # shaped like ~/.aws
    aws.mkdir(parents=True)
    (aws / "credentials").write_text("aws_secret_access_key = not-for-the-auditor\n")
    other_run = Path(fleet_env["SCANFLEET_RESULTS_DIR"]) / "20200101T000000Z-0a0b0c"
    other_run.mkdir(parents=True)
    (other_run / "run.json").write_text('{"cluster": "another"}\n')
    standin_log = standin_io / "standin.jsonl"
    env = {
        **fleet_env,
        # Even allowed prefixes do not let a directory through.
        "SCANFLEET_ALLOWED_INPUTS": os.pathsep.join([str(inputs), str(aws.parent)]),
        "SCANFLEET_STANDIN_LOG": str(standin_log),
    }
    r = redis_server.client()

    def submit(*extra: str) -> str:
        proc = run_cli(
            ["submit", "--context", "east", "apps/api/app", "--profile", "p", *extra], env
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout.splitlines()[0].strip()

    def edit_plan(run_id: str, **changes: object) -> None:
        key = f"{KEY_PREFIX}:run:{run_id}:plan"
        plan = json.loads(r.get(key) or "{}")
        r.set(key, json.dumps({**plan, **changes}), keepttl=True)

    # Queued with no worker running, edited in Redis, then a worker starts.
    both = submit()
    edit_plan(both, input_files=[str(aws)], extra_args=["--waiver-file", str(other_run)])
    waiver = submit()
    edit_plan(waiver, extra_args=[f"--waiver-file={other_run}"])
    allowed = submit("--input-file", str(inputs / "ok.yml"))
    make_worker(env, concurrency=2)
    runs = (both, waiver, allowed)
    key = f"{KEY_PREFIX}:run:{{}}:result"
    wait_for(lambda: all(r.exists(key.format(x)) for x in runs), 60, "runs to finish")

    results = Path(env["SCANFLEET_RESULTS_DIR"])
    for run_id, named in ((both, str(aws)), (waiver, str(other_run))):
        (summary,) = iter_summaries(results / run_id)
        assert summary["status"] == "error", summary
        assert summary["error"]["kind"] == "rejected"
        assert named in summary["error"]["message"]
    (ok,) = iter_summaries(results / allowed)
    assert ok["status"] == "completed", ok
    ran = [json.loads(line) for line in standin_log.read_text().splitlines()]
    assert len(ran) == 1, "only the allowed run may start an auditor"
    assert str(inputs / "ok.yml") in ran[0]["argv"]
