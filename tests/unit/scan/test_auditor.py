"""The auditor seam: argv, environment, exit codes, stderr, and never leaving a process behind.

Runs the real subprocess machinery against the stand-in (scanfleet/testing/standin/cinc-auditor).
"""

from __future__ import annotations

import _thread
import dataclasses
import json
import os
import signal
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from scanfleet.core.errors import AuditorFailed, AuditorMissing, ScanInterrupted, ScanTimeout
from scanfleet.core.targets import Target
from scanfleet.scan.auditor import (
    STDERR_TAIL_BYTES,
    AuditResult,
    auditor_environment,
    build_argv,
    run_auditor,
)
from scanfleet.testing.fakekube import FakeCluster
from tests.support.fixtures_auditor import AuditorLog, PlanWriter, this_host
from tests.support.kubeapi import api_client, mint_scoped_token

TARGET = Target("kind-a", "team-a", "web-7d4b9", "app")
FAKE_JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.sig"


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll `predicate` until true, failing the test at the deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie awaiting its reaper)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: fall back to signal 0
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return raw[raw.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    d = tmp_path / "scan"
    d.mkdir()
    return d


@pytest.fixture
def cluster(make_cluster: Callable[..., FakeCluster]) -> FakeCluster:
    """The fake cluster the stand-in execs into: TARGET's pod, plus team-b/db-0."""
    cluster = make_cluster()
    cluster.add_namespace("team-a")
    cluster.add_pod("team-a", "web-7d4b9", containers=["app", "sidecar"])
    cluster.add_namespace("team-b")
    cluster.add_pod("team-b", "db-0", containers=["pg"])
    return cluster


@pytest.fixture
def kubeconfig(cluster: FakeCluster, tmp_path: Path) -> Path:
    """A kubeconfig for `cluster`, laid out as the credentials step writes it (0600 in 0700).

    The stand-in authenticates with it and execs into the target, as the transport does.
    """
    d = tmp_path / "kc"
    d.mkdir(mode=0o700)
    d.chmod(0o700)
    return cluster.write_kubeconfig(d / "config", namespace="team-a")


@pytest.fixture
def run(standin_auditor: str, workdir: Path, kubeconfig: Path) -> Callable[..., AuditResult]:
    """run_auditor against the stand-in with test defaults; keyword arguments override."""

    def go(**kw: Any) -> AuditResult:
        args: dict[str, Any] = {
            "auditor": standin_auditor,
            "profile": "profiles/baseline",
            "target": TARGET,
            "report_path": workdir / "report.json",
            "kubeconfig": kubeconfig,
            "timeout": 30.0,
        }
        args.update(kw)
        if "host" not in args:
            args["host"] = this_host()
        return run_auditor(**args)

    return go


def read_pids(pid_file: Path) -> dict[str, int]:
    wait_until(pid_file.exists, what="the stand-in's pid file")
    pids: dict[str, int] = json.loads(pid_file.read_text())
    return pids


# --- argv -----------------------------------------------------------------------------------


def test_build_argv_is_exactly_the_cli_contract() -> None:
    argv = build_argv(
        "/opt/cinc-auditor/bin/cinc-auditor",
        "https://example.com/profile.tar.gz",
        TARGET,
        Path("/results/r1/abc.report.json"),
        input_files=[Path("/in/a.yml"), "b.yml"],
        extra_args=["--no-color", "--log-level", "warn"],
    )
    assert argv == [
        "/opt/cinc-auditor/bin/cinc-auditor",
        "exec",
        "https://example.com/profile.tar.gz",
        "-t",
        "k8s-container://team-a/web-7d4b9/app",
        "--reporter",
        "json:/results/r1/abc.report.json",
        "--input-file",
        "/in/a.yml",
        "--input-file",
        "b.yml",
        "--no-color",
        "--log-level",
        "warn",
    ]


def test_build_argv_refuses_an_unresolved_container() -> None:
    with pytest.raises(ValueError, match="no container"):
        build_argv("cinc-auditor", "p", Target("c", "ns", "pod"), Path("r.json"))


def test_the_auditor_receives_argv_unchanged(
    run: Callable[..., AuditResult], auditor_log: AuditorLog, kubeconfig: Path, tmp_path: Path
) -> None:
    inputs = tmp_path / "inputs.yml"
    inputs.write_text("x: 1\n")
    run(input_files=[inputs], extra_args=["--no-color"])
    [record] = auditor_log()
    assert record["argv"][1:] == [
        "exec",
        "profiles/baseline",
        "-t",
        "k8s-container://team-a/web-7d4b9/app",
        "--reporter",
        # Inside the scan's private dir; scanfleet rewrites it to report_path afterwards.
        f"json:{kubeconfig.parent / 'auditor' / 'report.json'}",
        "--input-file",
        str(inputs),
        "--no-color",
    ]
    assert record["target"] == {"namespace": "team-a", "pod": "web-7d4b9", "container": "app"}


def test_no_shell_metacharacters_are_passed_literally(
    run: Callable[..., AuditResult],
    auditor_log: AuditorLog,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(workdir)
    profile = "p; touch pwned-semicolon"
    # After a switch, so the Thor-style array option before it does not swallow them.
    extra = ["--no-color", "$(touch pwned-subst)", "`touch pwned-backtick`", "a && touch pwned-and"]
    run(profile=profile, extra_args=extra)
    [record] = auditor_log()
    assert record["profile"] == profile
    assert record["other_args"] == extra
    assert not list(workdir.glob("pwned*"))


def test_runs_in_its_own_session_and_process_group(
    run: Callable[..., AuditResult], auditor_log: AuditorLog
) -> None:
    run()
    [record] = auditor_log()
    assert record["pgid"] == record["pid"]
    assert record["sid"] == record["pid"]
    assert record["pgid"] != os.getpgid(0)


# --- environment ----------------------------------------------------------------------------


def test_kubeconfig_is_the_temp_path_only(
    run: Callable[..., AuditResult],
    auditor_log: AuditorLog,
    kubeconfig: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KUBECONFIG", "/home/admin/.kube/config:/etc/admin.conf")
    monkeypatch.setenv("SCANFLEET_E2E_KUBECONFIG", "/home/admin/.kube/e2e")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/secrets/gcp.json")
    monkeypatch.setenv("SCANFLEET_BROKER_URL", "redis://:hunter2@redis:6379/0")
    monkeypatch.setenv("CINC_GITHUB_TOKEN", "ghp_xxx")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    run()
    [record] = auditor_log()
    assert record["kubeconfig"] == str(kubeconfig)
    keys = set(record["env_keys"])
    assert {"KUBECONFIG", "PATH", "LC_ALL", "SCANFLEET_STANDIN_LOG"} <= keys
    for leaked in (
        "SCANFLEET_E2E_KUBECONFIG",
        "AWS_SECRET_ACCESS_KEY",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "SCANFLEET_BROKER_URL",
        "CINC_GITHUB_TOKEN",
    ):
        assert leaked not in keys
    assert "/home/admin" not in json.dumps(record)


def test_explicit_env_is_filtered_the_same_way(kubeconfig: Path) -> None:
    env = auditor_environment(
        kubeconfig,
        {
            "PATH": "/usr/bin",
            "HOME": "/home/w",
            "KUBECONFIG": "/admin",
            "kubeconfig": "/x",
            "INSPEC_KUBECONFIG": "/admin",
            "AZURE_CLIENT_SECRET": "s",
            "HTTPS_PROXY": "http://proxy:3128",
            "INSPEC_LOG": "x",
        },
    )
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/home/w",
        "HTTPS_PROXY": "http://proxy:3128",
        "INSPEC_LOG": "x",
        "KUBECONFIG": str(kubeconfig),
    }


def test_run_auditor_uses_the_given_env_as_base(
    run: Callable[..., AuditResult], auditor_log: AuditorLog, kubeconfig: Path
) -> None:
    base = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/"),
        "KUBECONFIG": "/admin/config",
        "SCANFLEET_STANDIN_LOG": str(auditor_log.path),
    }
    run(host=dataclasses.replace(this_host(), environment=base))
    [record] = auditor_log()
    assert record["kubeconfig"] == str(kubeconfig)
    assert set(record["env_keys"]) <= {*base, "PWD", "LC_CTYPE", "KUBECONFIG", "TMPDIR"}


def test_the_host_read_at_start_up_decides_not_the_environment_at_scan_time(
    run: Callable[..., AuditResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    host = this_host()
    monkeypatch.setenv("SCANFLEET_SANDBOX", "maybe")  # refused, were it read per scan
    assert run(host=host).exit_code in (0, 100, 101)


def test_stopping_one_host_leaves_the_audits_of_another_running(
    run: Callable[..., AuditResult], auditor_plan: PlanWriter, standin_io: Path
) -> None:
    pid_file = standin_io / "pids.json"
    auditor_plan({"*": {"sleep": 120, "pid_file": str(pid_file)}})
    mine, other = this_host(), this_host()
    outcome: list[BaseException] = []

    def scan() -> None:
        try:
            run(host=mine)
        except BaseException as e:  # handed to the test thread
            outcome.append(e)

    thread = threading.Thread(target=scan)
    thread.start()
    try:
        wait_until(pid_file.exists, what="the auditor to start")
        other.stop.set()
        thread.join(0.5)
        assert thread.is_alive(), "another host's stop ended this audit"
    finally:
        mine.stop.set()
        thread.join(60)
    [error] = outcome
    assert isinstance(error, ScanInterrupted)


# --- exit codes and reports -----------------------------------------------------------------


@pytest.fixture
def passing_report(samples_dir: Path, standin_io: Path) -> Path:
    """minimal_hdf.json with its one failed result turned passed (InSpec would exit 0)."""
    data = json.loads((samples_dir / "minimal_hdf.json").read_text())
    for control in data["profiles"][0]["controls"]:
        for result in control["results"]:
            result["status"] = "passed"
            result.pop("message", None)
    path = standin_io / "passing.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        ("minimal_hdf.json", 100),  # one failed control
        ("rhel8_sample_oneOfEachControlStatus.json", 100),  # failed beats skipped
        ("red_hat_good.json", 101),  # skipped controls, none failed
        ("passing", 0),
    ],
)
def test_completed_audits_return_inspec_exit_codes(
    run: Callable[..., AuditResult],
    samples_dir: Path,
    passing_report: Path,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    sample: str,
    expected: int,
) -> None:
    report = passing_report if sample == "passing" else samples_dir / sample
    monkeypatch.setenv("SCANFLEET_STANDIN_REPORT", str(report))
    result = run()
    assert result.exit_code == expected
    assert result.duration_s > 0
    assert (workdir / "report.json").read_bytes() == report.read_bytes()


def test_default_report_is_the_minimal_sample(
    run: Callable[..., AuditResult], samples_dir: Path, workdir: Path
) -> None:
    assert run().exit_code == 100
    assert (workdir / "report.json").read_bytes() == (samples_dir / "minimal_hdf.json").read_bytes()


def test_plan_exit_code_and_bad_reports_pass_through(
    run: Callable[..., AuditResult], auditor_plan: PlanWriter, workdir: Path
) -> None:
    auditor_plan({"*": {"garbage": True, "exit": 0}})
    assert run().exit_code == 0
    with pytest.raises(json.JSONDecodeError):
        json.loads((workdir / "report.json").read_text())
    (workdir / "report.json").unlink()
    auditor_plan({"*": {"no_report": True, "exit": 101}})
    assert run().exit_code == 101
    assert not (workdir / "report.json").exists()


def test_most_specific_plan_key_wins(
    run: Callable[..., AuditResult], auditor_plan: PlanWriter
) -> None:
    auditor_plan(
        {"*": {"exit": 0}, "team-a/web-7d4b9": {"exit": 101}, "team-a/web-7d4b9/app": {"exit": 100}}
    )
    assert run().exit_code == 100
    assert run(target=TARGET.with_container("sidecar")).exit_code == 101
    assert run(target=Target("kind-a", "team-b", "db-0", "pg")).exit_code == 0


def test_other_exit_is_auditor_failed_with_redacted_stderr(
    run: Callable[..., AuditResult], auditor_plan: PlanWriter
) -> None:
    auditor_plan(
        {
            "*": {
                "exit": 3,
                "stderr": f"Authorization: Bearer {FAKE_JWT}\ntoken {FAKE_JWT}\n"
                "Train::Transports::K8sContainer: pod not reachable\n",
            }
        }
    )
    with pytest.raises(AuditorFailed) as info:
        run()
    message = str(info.value)
    assert message.startswith("auditor exited with code 3: ")
    assert "pod not reachable" in message
    assert FAKE_JWT not in message
    assert "eyJhbGciOiJSUzI1NiJ9" not in message
    assert "[REDACTED]" in message
    assert info.value.kind == "auditor_exit"


def test_stderr_secrets_split_by_escapes_or_controls_are_redacted(
    run: Callable[..., AuditResult], auditor_plan: PlanWriter
) -> None:
    auditor_plan(
        {
            "*": {
                "exit": 3,
                "stderr": 'password: "hun\x1b[0mter22"\naws_secret_access_key = wJalr\x00XUtn\n'
                "token: abc\x07123456\nfatal: pod not reachable\n",
            }
        }
    )
    with pytest.raises(AuditorFailed) as info:
        run()
    message = str(info.value)
    assert "pod not reachable" in message
    for piece in ("ter22", "XUtn", "123456", "\x1b", "\x00", "\x07"):
        assert piece not in message


def test_usage_error_is_auditor_failed(run: Callable[..., AuditResult], tmp_path: Path) -> None:
    with pytest.raises(AuditorFailed, match=r"code 1: .*Cannot find input file"):
        run(input_files=[tmp_path / "missing-inputs.yml"])


def test_huge_stderr_keeps_only_the_tail_in_bounded_memory(
    run: Callable[..., AuditResult], auditor_plan: PlanWriter
) -> None:
    auditor_plan(
        {
            "*": {
                "exit": 2,
                "stderr_bytes": 5 * 1024 * 1024,
                "stderr_tail": f"leaked {FAKE_JWT}\nfatal: THE-END",
            }
        }
    )
    tracemalloc.start()
    try:
        with pytest.raises(AuditorFailed) as info:
            run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    prefix = "auditor exited with code 2: "
    message = str(info.value)
    assert message.startswith(prefix)
    tail = message[len(prefix) :]
    assert len(tail.encode()) <= STDERR_TAIL_BYTES
    assert tail.endswith("fatal: THE-END")
    assert FAKE_JWT not in message
    assert peak < 1024 * 1024, f"peak Python allocation {peak} bytes for 5 MB of stderr"


# --- missing auditor ------------------------------------------------------------------------


def test_missing_executable_is_auditor_missing(
    run: Callable[..., AuditResult], tmp_path: Path
) -> None:
    missing = str(tmp_path / "no-such-cinc-auditor")
    with pytest.raises(AuditorMissing, match="SCANFLEET_AUDITOR") as info:
        run(auditor=missing)
    assert missing in str(info.value)
    assert "install cinc-auditor" in str(info.value)
    assert info.value.kind == "auditor_missing"


def test_missing_executable_on_path_is_auditor_missing(run: Callable[..., AuditResult]) -> None:
    with pytest.raises(AuditorMissing, match="cinc-auditor-not-installed"):
        run(auditor="cinc-auditor-not-installed")


def test_non_executable_file_is_auditor_missing(
    run: Callable[..., AuditResult], tmp_path: Path
) -> None:
    plain = tmp_path / "cinc-auditor"
    plain.write_text("#!/bin/sh\nexit 0\n")
    plain.chmod(0o644)
    with pytest.raises(AuditorMissing, match="SCANFLEET_AUDITOR"):
        run(auditor=str(plain))


# --- timeouts and interruption: the process group dies --------------------------------------


def test_timeout_terminates_the_whole_process_group(
    run: Callable[..., AuditResult],
    auditor_plan: PlanWriter,
    auditor_log: AuditorLog,
    standin_io: Path,
) -> None:
    pid_file = standin_io / "pids.json"
    auditor_plan({"*": {"sleep": 120, "spawn_child": True, "pid_file": str(pid_file)}})
    # TERM is enough: with a kill grace longer than the test's own timeout, waiting for the
    # grace instead of for the group's exit would hang the test.
    with pytest.raises(ScanTimeout, match=r"timed out after 1\.5 s") as info:
        run(timeout=1.5, kill_grace=600)
    assert info.value.kind == "timeout"
    pids = read_pids(pid_file)
    assert pids["child_pid"]
    assert pids["child_pid"] != pids["pid"]
    wait_until(
        lambda: not alive(pids["pid"]) and not alive(pids["child_pid"]),
        what="the auditor and its child to die",
    )
    [record] = auditor_log()
    assert record["signal"] == "SIGTERM"
    assert record["exit"] == 143


def test_timeout_escalates_to_kill_when_term_is_ignored(
    run: Callable[..., AuditResult], auditor_plan: PlanWriter, standin_io: Path
) -> None:
    pid_file = standin_io / "pids.json"
    auditor_plan(
        {"*": {"sleep": 120, "spawn_child": True, "ignore_term": True, "pid_file": str(pid_file)}}
    )
    with pytest.raises(ScanTimeout):
        run(timeout=1.0, kill_grace=0.5)
    pids = read_pids(pid_file)
    wait_until(
        lambda: not alive(pids["pid"]) and not alive(pids["child_pid"]),
        what="SIGKILL to reach the auditor and its child",
    )


def test_stragglers_are_removed_after_a_normal_exit(
    run: Callable[..., AuditResult], auditor_plan: PlanWriter, standin_io: Path
) -> None:
    pid_file = standin_io / "pids.json"
    auditor_plan({"*": {"spawn_child": True, "pid_file": str(pid_file)}})
    assert run().exit_code == 100
    pids = read_pids(pid_file)
    wait_until(lambda: not alive(pids["child_pid"]), what="the leftover child to die")


def _interrupt_main_when(pid_file: Path, interrupt: Callable[[], None]) -> threading.Thread:
    def watch() -> None:
        deadline = time.monotonic() + 20
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        interrupt()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_keyboard_interrupt_kills_the_group_and_is_reraised(
    run: Callable[..., AuditResult], auditor_plan: PlanWriter, standin_io: Path
) -> None:
    pid_file = standin_io / "pids.json"
    auditor_plan({"*": {"sleep": 120, "spawn_child": True, "pid_file": str(pid_file)}})
    watcher = _interrupt_main_when(pid_file, _thread.interrupt_main)
    with pytest.raises(KeyboardInterrupt):
        run(timeout=60)
    watcher.join(5)
    pids = read_pids(pid_file)
    wait_until(
        lambda: not alive(pids["pid"]) and not alive(pids["child_pid"]),
        what="the interrupted auditor group to die",
    )


def test_exception_from_a_signal_handler_kills_the_group_and_is_reraised(
    run: Callable[..., AuditResult], auditor_plan: PlanWriter, standin_io: Path
) -> None:
    pid_file = standin_io / "pids.json"
    auditor_plan(
        {"*": {"sleep": 120, "spawn_child": True, "ignore_term": True, "pid_file": str(pid_file)}}
    )

    def on_usr1(signum: int, _frame: object) -> None:
        raise ScanInterrupted("worker received SIGUSR1")

    previous = signal.signal(signal.SIGUSR1, on_usr1)
    try:
        watcher = _interrupt_main_when(pid_file, lambda: os.kill(os.getpid(), signal.SIGUSR1))
        with pytest.raises(ScanInterrupted, match="SIGUSR1"):
            run(timeout=60, kill_grace=0.3)
        watcher.join(5)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    pids = read_pids(pid_file)
    wait_until(
        lambda: not alive(pids["pid"]) and not alive(pids["child_pid"]),
        what="the interrupted auditor group to die",
    )


# --- the stand-in's own contract ------------------------------------------------------------


def test_standin_prints_a_version(standin_auditor: str) -> None:
    import subprocess

    out = subprocess.run(
        [standin_auditor, "version"], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip()[0].isdigit()


def test_standin_refuses_a_loose_kubeconfig(
    run: Callable[..., AuditResult], kubeconfig: Path
) -> None:
    kubeconfig.chmod(0o644)
    with pytest.raises(AuditorFailed, match="mode 0644, expected 0600"):
        run()
    kubeconfig.chmod(0o600)
    kubeconfig.parent.chmod(0o755)
    with pytest.raises(AuditorFailed, match="mode 0755, expected 0700"):
        run()


def test_standin_execs_into_the_target_with_the_kubeconfig(
    run: Callable[..., AuditResult], cluster: FakeCluster
) -> None:
    run()
    [attempt] = cluster.exec_attempts
    assert (attempt.namespace, attempt.pod, attempt.container) == ("team-a", "web-7d4b9", "app")
    assert attempt.command == ("true",)
    assert attempt.allowed


@pytest.fixture
def scoped_kubeconfig(cluster: FakeCluster, kubeconfig: Path, tmp_path: Path) -> Path:
    """A kubeconfig (0600 in 0700) holding a token scoped to TARGET's pod, as a scan mints."""
    with api_client(kubeconfig) as api:
        token = mint_scoped_token(api, "team-a", "web-7d4b9")
    d = tmp_path / "scoped"
    d.mkdir(mode=0o700)
    d.chmod(0o700)
    return cluster.write_kubeconfig(d / "config", token=token, namespace="team-a")


@pytest.mark.leaves_leftovers("mints its identity by hand, as the fake's own tests do")
@pytest.mark.parametrize("how", ["expired", "revoked", "unknown"])
def test_standin_fails_with_a_dead_credential(
    run: Callable[..., AuditResult],
    auditor_log: AuditorLog,
    cluster: FakeCluster,
    kubeconfig: Path,
    scoped_kubeconfig: Path,
    workdir: Path,
    how: str,
) -> None:
    assert run(kubeconfig=scoped_kubeconfig).exit_code == 100  # the live token works
    token = yaml.safe_load(scoped_kubeconfig.read_text())["users"][0]["user"]["token"]
    if how == "expired":
        cluster.expire_token(token)
    elif how == "revoked":
        with api_client(kubeconfig) as api:
            client.CoreV1Api(api).delete_namespaced_service_account("scan-1", "team-a")
    else:
        text = scoped_kubeconfig.read_text().replace(token, FAKE_JWT)
        scoped_kubeconfig.write_text(text)
    (workdir / "report.json").unlink()
    with pytest.raises(AuditorFailed) as info:
        run(kubeconfig=scoped_kubeconfig)
    assert info.value.kind == "auditor_exit"
    assert "must be logged in" in str(info.value) or "Unauthorized" in str(info.value)
    assert token not in str(info.value)
    assert token not in auditor_log.path.read_text()
    assert not (workdir / "report.json").exists()
