"""`scanfleet scan` end to end: fake API server, stand-in auditor, real files, exit codes.

Every failure path must end with the right exit code, the right error.kind and no
scanfleet object left in the fake cluster; no issued token may appear anywhere.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from kubernetes import client, config

from scanfleet.cli import main_group
from scanfleet.cli import scan as _register_scan  # noqa: F401
from scanfleet.testing.fakekube import FakeCluster
from tests.support.fixtures_auditor import this_host

PY = sys.executable


@dataclass
class Outcome:
    exit_code: int
    stdout: str
    stderr: str
    run: dict[str, Any] | None
    summaries: list[dict[str, Any]]
    run_dir: Path | None


def collect(results: Path, exit_code: int, stdout: str, stderr: str) -> Outcome:
    dirs = sorted(p for p in results.iterdir() if p.is_dir()) if results.exists() else []
    run_dir = dirs[-1] if dirs else None
    run = json.loads((run_dir / "run.json").read_text()) if run_dir else None
    summaries = []
    if run_dir:
        for p in sorted(run_dir.glob("*.json")):
            if p.name != "run.json" and not p.name.endswith(".report.json"):
                summaries.append(json.loads(p.read_text()))
    return Outcome(exit_code, stdout, stderr, run, summaries, run_dir)


@pytest.fixture
def scan(
    admin_kubeconfig: Path, standin_auditor: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Outcome]:
    results = tmp_path / "results"
    monkeypatch.setenv("SCANFLEET_AUDITOR", standin_auditor)
    monkeypatch.delenv("KUBECONFIG", raising=False)

    def run(*args: str, profile: str = "profile-dir") -> Outcome:
        argv = [
            "scan",
            *args,
            "--profile",
            profile,
            "--kubeconfig",
            str(admin_kubeconfig),
            "--output",
            str(results),
        ]
        r = CliRunner().invoke(main_group, argv, catch_exceptions=False)
        return collect(results, r.exit_code, r.stdout, r.stderr)

    return run


@pytest.fixture(autouse=True)
def _nothing_left_behind(request: pytest.FixtureRequest) -> Any:
    """Whatever a test does, no scanfleet RBAC object may survive it."""
    cluster: FakeCluster | None = None
    if "fake_cluster" in request.fixturenames:
        cluster = request.getfixturevalue("fake_cluster")
    yield
    if cluster is not None:
        assert cluster.scanfleet_objects() == []


def assert_no_token_leak(cluster: FakeCluster, *texts: str, files: Path | None = None) -> None:
    tokens = cluster.issued_tokens
    assert tokens, "the scan should have issued a token"
    blobs = list(texts)
    if files is not None:
        blobs += [p.read_text() for p in files.rglob("*") if p.is_file()]
    for tok in tokens:
        for blob in blobs:
            assert tok not in blob


def test_scan_one_container_writes_report_summary_and_run(
    scan: Callable[..., Outcome], fake_cluster: FakeCluster, samples_dir: Path
) -> None:
    out = scan("apps/web/app")
    assert out.exit_code == 0, out.stderr
    assert out.stdout.splitlines()[0] == out.run["run_id"] if out.run else False
    [s] = out.summaries
    assert s["status"] == "completed"
    assert s["error"] is None
    assert s["target"] == {
        "context": "fake",
        "namespace": "apps",
        "pod": "web",
        "container": "app",
        "image": "registry.example/web:1.4",
        "image_id": s["target"]["image_id"],
    }
    assert s["counts"]["failed"] == {
        "total": 1,
        "critical": 0,
        "high": 1,
        "medium": 0,
        "low": 0,
        "none": 0,
    }
    assert s["compliance"] == 0
    assert s["threshold"] == {"passed": None, "failures": []}
    assert s["failed_controls"] == [
        {
            "id": "test",
            "title": "Returns a fail",
            "severity": "high",
            "impact": 0.7,
            "message": "expected false\n     got true",
            "fix": None,
        }
    ]
    assert s["cleanup"] == "complete"
    assert out.run_dir is not None
    raw = (out.run_dir / f"{s['scan_id']}.report.json").read_bytes()
    assert raw == (samples_dir / "minimal_hdf.json").read_bytes()
    assert out.run is not None
    assert out.run["targets"]["total"] == 1
    assert out.run["exit_code"] == 0
    assert out.run["source"] == "scan"
    assert out.run["profile"] == "profile-dir"
    # The stand-in proved with kubectl that the scan identity could read the pod.
    assert_no_token_leak(fake_cluster, out.stdout, out.stderr, files=out.run_dir)


def test_threshold_failure_exits_1_with_every_failure(
    scan: Callable[..., Outcome], tmp_path: Path
) -> None:
    th = tmp_path / "th.yml"
    th.write_text("failed:\n  high:\n    max: 0\ncompliance.min: 50\n")
    out = scan("apps/web/app", "--threshold", str(th))
    assert out.exit_code == 1
    [s] = out.summaries
    assert s["threshold"]["passed"] is False
    assert len(s["threshold"]["failures"]) == 2
    assert any(f.startswith("failed.high.max") for f in s["threshold"]["failures"])
    assert "failed.high.max" in out.stdout


def test_threshold_met_exits_0(scan: Callable[..., Outcome], tmp_path: Path) -> None:
    th = tmp_path / "th.yml"
    th.write_text("failed.high.max: 1\n")
    out = scan("apps/web/app", "--threshold", str(th))
    assert out.exit_code == 0
    assert out.summaries[0]["threshold"] == {"passed": True, "failures": []}


def test_pod_without_container_scans_every_regular_container(
    scan: Callable[..., Outcome], auditor_log: Callable[[], list[dict[str, Any]]]
) -> None:
    out = scan("apps/web")
    assert out.exit_code == 0
    assert sorted(s["target"]["container"] for s in out.summaries) == ["app", "sidecar"]
    targets = sorted(rec["argv"][rec["argv"].index("-t") + 1] for rec in auditor_log())
    assert targets == ["k8s-container://apps/web/app", "k8s-container://apps/web/sidecar"]


@pytest.mark.parametrize(
    ("target", "needle"),
    [
        ("apps/ghost/app", "ghost"),
        ("apps/web/nope", "'nope'"),
        ("nowhere/web/app", "web"),
        ("apps/pending/app", "Pending"),
    ],
)
def test_missing_target_is_a_scan_error(
    scan: Callable[..., Outcome], fake_cluster: FakeCluster, target: str, needle: str
) -> None:
    out = scan(target)
    assert out.exit_code == 3
    [s] = out.summaries
    assert s["status"] == "error"
    assert s["error"]["kind"] == "target_not_found"
    assert needle in s["error"]["message"]
    # The scan's own token found out; the admin identity never read the pod.
    assert not [
        r for r in fake_cluster.request_log if r.resource == "pods" and r.identity == "fake-admin"
    ]


@pytest.mark.parametrize(
    ("plan", "kind", "needle"),
    [
        ({"exit": 2, "stderr": "Could not load profile"}, "auditor_exit", "Could not load profile"),
        ({"garbage": True}, "invalid_report", ""),
        ({"no_report": True, "exit": 0}, "invalid_report", "no report"),
        ({"sleep": 30}, "timeout", "2"),
    ],
)
def test_auditor_failures(
    scan: Callable[..., Outcome],
    auditor_plan: Callable[..., Path],
    plan: dict[str, Any],
    kind: str,
    needle: str,
) -> None:
    auditor_plan({"*": plan})
    out = scan("apps/web/app", "--timeout", "2")
    assert out.exit_code == 3, out.stderr
    [s] = out.summaries
    assert s["error"]["kind"] == kind
    assert needle in s["error"]["message"]
    assert s["cleanup"] == "complete"
    assert out.run is not None
    assert out.run["targets"]["error"] == 1
    assert f"[{kind}]" in out.stdout


def test_a_pod_replaced_during_a_failing_audit_is_target_changed(
    scan: Callable[..., Outcome],
    fake_cluster: FakeCluster,
    auditor_plan: Callable[..., Path],
    standin_io: Path,
) -> None:
    pid_file, go = standin_io / "auditor.pid", standin_io / "go"
    auditor_plan(
        {
            "*": {
                "pid_file": str(pid_file),
                "wait_for": str(go),
                "exit": 1,
                "stderr": "error: pod went away",
            }
        }
    )
    old_uid = fake_cluster.objects("pods", "apps")
    old_uid = next(p["metadata"]["uid"] for p in old_uid if p["metadata"]["name"] == "web")
    new_uid: list[str] = []

    def replace_pod_while_the_auditor_runs() -> None:
        deadline = time.monotonic() + 60
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        fake_cluster.delete_pod("apps", "web")
        pod = fake_cluster.add_pod("apps", "web", containers=[("app", "registry.example/web:2")])
        new_uid.append(pod["metadata"]["uid"])
        go.touch()

    watcher = threading.Thread(target=replace_pod_while_the_auditor_runs)
    watcher.start()
    out = scan("apps/web/app")
    watcher.join()
    assert out.exit_code == 3, out.stderr
    [s] = out.summaries
    assert s["error"]["kind"] == "target_changed"
    assert f"uid {old_uid} when the scan started, {new_uid[0]} now" in s["error"]["message"]
    assert "apps/web" in s["error"]["message"]
    assert s["cleanup"] == "complete"
    assert "[target_changed]" in out.stdout


@pytest.mark.parametrize("how", ["expired", "revoked"])
def test_a_dead_scan_token_fails_the_scan(
    scan: Callable[..., Outcome],
    fake_cluster: FakeCluster,
    auditor_plan: Callable[..., Path],
    auditor_log: Any,
    admin_kubeconfig: Path,
    standin_io: Path,
    how: str,
) -> None:
    # Once the auditor has started (the stand-in holds until `go` exists), its token dies:
    # the stand-in authenticates and execs with the kubeconfig it was given, so it must be
    # refused and the scan must end in auditor_exit, with no report. Both files live where
    # the sandboxed stand-in may write (standin_io).
    started, go = standin_io / "started.json", standin_io / "go"
    auditor_plan({"*": {"pid_file": str(started), "wait_for": str(go)}})

    def kill_the_token() -> None:
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        [token] = fake_cluster.issued_tokens
        if how == "expired":
            fake_cluster.expire_token(token)
        else:
            [sa] = [
                o["metadata"]["name"]
                for o in fake_cluster.objects("serviceaccounts", "apps")
                if o["metadata"]["name"].startswith("scanfleet-")
            ]
            with config.new_client_from_config(str(admin_kubeconfig), context="fake") as api:
                client.CoreV1Api(api).delete_namespaced_service_account(sa, "apps")
        go.touch()

    thread = threading.Thread(target=kill_the_token, daemon=True)
    thread.start()
    out = scan("apps/web/app")
    thread.join(timeout=60)
    assert out.exit_code == 3, out.stderr
    [s] = out.summaries
    assert s["status"] == "error"
    assert s["error"]["kind"] == "auditor_exit"
    assert "must be logged in" in s["error"]["message"]
    [record] = auditor_log()
    assert record["exit"] == 1
    assert fake_cluster.exec_attempts == []  # refused at authentication, before exec
    assert out.run_dir is not None
    assert not list(out.run_dir.glob("*.report.json"))
    [token] = fake_cluster.issued_tokens
    texts = [
        out.stdout,
        out.stderr,
        auditor_log.path.read_text(),
        *(p.read_text() for p in out.run_dir.iterdir()),
    ]
    assert not any(token in text for text in texts)


def test_auditor_missing(
    scan: Callable[..., Outcome], monkeypatch: pytest.MonkeyPatch, fake_cluster: FakeCluster
) -> None:
    # `scan` checks the executable before anything is created: bad input, exit 2.
    monkeypatch.setenv("SCANFLEET_AUDITOR", "/nonexistent/cinc-auditor")
    out = scan("apps/web/app")
    assert out.exit_code == 2
    assert "auditor executable '/nonexistent/cinc-auditor' not found" in out.stderr
    assert out.run is None
    assert not any(r.method == "POST" for r in fake_cluster.requests)


def test_auditor_missing_when_the_scan_runs_is_recorded(
    fake_cluster: FakeCluster, admin_kubeconfig: Path, tmp_path: Path
) -> None:
    # Where no pre-check ran (a worker whose auditor vanished), the target records it.
    from scanfleet.core.targets import Target
    from scanfleet.kube.client import ClientCache
    from scanfleet.scan.plan import ScanOptions
    from scanfleet.scan.target import scan_target

    clients = ClientCache(str(admin_kubeconfig), retries=0)
    options = ScanOptions(profile="p", auditor="/nonexistent/cinc-auditor")
    scanned = scan_target(
        clients,
        Target("fake", "apps", "web", "app"),
        "20260101T000000Z-abcdef",
        options,
        tmp_path,
        host=this_host(),
    )
    clients.close()
    error = scanned.summary["error"]
    assert error is not None
    assert error["kind"] == "auditor_missing"
    assert fake_cluster.scanfleet_objects() == []


def test_forbidden_admin_leaves_nothing_behind(
    scan: Callable[..., Outcome], fake_cluster: FakeCluster
) -> None:
    # The admin may read pods and create ServiceAccounts but not Roles: the mint fails half
    # way, and the ServiceAccount it did create must be removed again.
    fake_cluster.set_admin_rules(
        [
            {"apiGroups": [""], "resources": ["pods", "namespaces"], "verbs": ["get", "list"]},
            {
                "apiGroups": [""],
                "resources": ["serviceaccounts", "serviceaccounts/token"],
                "verbs": ["create", "delete", "get"],
            },
        ]
    )
    out = scan("apps/web/app")
    assert out.exit_code == 3
    [s] = out.summaries
    assert s["error"]["kind"] == "forbidden"
    assert "Role" in s["error"]["message"]
    assert any(
        r.method == "POST" and r.path.endswith("/serviceaccounts") for r in fake_cluster.requests
    )


def test_server_errors_during_mint_undo_the_half_mint(
    scan: Callable[..., Outcome], fake_cluster: FakeCluster
) -> None:
    fake_cluster.fail("POST", r"/rolebindings$", 500, times=50)
    out = scan("apps/web/app")
    assert out.exit_code == 3
    assert out.summaries[0]["error"]["kind"] == "api_error"


def test_429_with_retry_after_is_retried(
    scan: Callable[..., Outcome], fake_cluster: FakeCluster
) -> None:
    fake_cluster.fail("POST", r"/serviceaccounts$", 429, times=2, retry_after=1)
    out = scan("apps/web/app")
    assert out.exit_code == 0, out.stderr
    posts = [
        r
        for r in fake_cluster.requests
        if r.method == "POST" and r.path.endswith("/serviceaccounts")
    ]
    assert len(posts) == 3


def test_forbidden_is_not_retried(scan: Callable[..., Outcome], fake_cluster: FakeCluster) -> None:
    fake_cluster.fail("POST", r"/roles$", 403, times=1)
    out = scan("apps/web/app")
    assert out.summaries[0]["error"]["kind"] == "forbidden"
    assert (
        len([r for r in fake_cluster.requests if r.method == "POST" and r.path.endswith("/roles")])
        == 1
    )


def test_failed_cleanup_is_recorded_incomplete(
    scan: Callable[..., Outcome], fake_cluster: FakeCluster, admin_kubeconfig: Path
) -> None:
    fake_cluster.fail("DELETE", r"/serviceaccounts/scanfleet-", 403, times=1)
    out = scan("apps/web/app")
    [s] = out.summaries
    assert s["status"] == "completed"
    assert s["cleanup"] == "incomplete"
    # The grant was still deleted; the ServiceAccount is what the janitor will catch.
    left = fake_cluster.scanfleet_objects()
    assert [o["kind"] for o in left] == ["ServiceAccount"]
    from scanfleet.kube.client import KubeClient

    assert KubeClient(str(admin_kubeconfig), "fake").delete(
        "ServiceAccount", "apps", left[0]["metadata"]["name"]
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["Apps/web"], "'Apps'"),
        (["apps/web", "--token-ttl", "60"], "60"),
        (["apps/web", "--token-ttl", "900", "--timeout", "1000"], "exceed"),
        (
            ["apps/web", "--token-ttl", "900", "--timeout", "800"],
            "900s must exceed the scan timeout 800s by at least 120s",
        ),
        (["apps/web", "--context", "nope"], "'nope'"),
        (["apps/web", "--input-file", "/nonexistent.yml"], "/nonexistent.yml"),
    ],
)
def test_bad_input_exits_2_and_creates_nothing(
    scan: Callable[..., Outcome], fake_cluster: FakeCluster, args: list[str], needle: str
) -> None:
    out = scan(*args)
    assert out.exit_code == 2
    assert needle in out.stderr
    assert out.run is None
    assert not [r for r in fake_cluster.requests if r.method != "GET"]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("", "empty"),
        ("failed.critical.mx: 0\n", "failed.critical.mx"),
        ("failed.critical.min: 3\nfailed.critical.max: 1\n", "failed.critical"),
    ],
)
def test_bad_threshold_file_exits_2_before_anything(
    scan: Callable[..., Outcome],
    fake_cluster: FakeCluster,
    tmp_path: Path,
    content: str,
    needle: str,
) -> None:
    th = tmp_path / "bad.yml"
    th.write_text(content)
    out = scan("apps/web/app", "--threshold", str(th))
    assert out.exit_code == 2
    assert needle in out.stderr
    assert not [r for r in fake_cluster.requests if r.method != "GET"]


def test_sigterm_during_audit_cleans_up(
    fake_cluster: FakeCluster,
    admin_kubeconfig: Path,
    standin_auditor: str,
    auditor_plan: Callable[..., Path],
    auditor_log: Callable[[], list[dict[str, Any]]],
    tmp_path: Path,
    standin_io: Path,
) -> None:
    pid_file = standin_io / "auditor.pid"
    auditor_plan({"*": {"sleep": 60, "pid_file": str(pid_file)}})
    results = tmp_path / "results"
    env = {**os.environ, "SCANFLEET_AUDITOR": standin_auditor}
    proc = subprocess.Popen(
        [
            PY,
            "-c",
            "from scanfleet.cli import main; main()",
            "scan",
            "apps/web/app",
            "--profile",
            "p",
            "--kubeconfig",
            str(admin_kubeconfig),
            "--output",
            str(results),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pid_file.exists(), "the auditor never started"
        assert len(fake_cluster.scanfleet_objects()) == 3, "identity exists while auditing"
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 3, stderr
    out = collect(results, proc.returncode, stdout, stderr)
    [s] = out.summaries
    assert s["error"]["kind"] == "interrupted"
    auditor_pid = json.loads(pid_file.read_text())["pid"]
    with pytest.raises(ProcessLookupError):
        os.kill(auditor_pid, 0)
    assert_no_token_leak(fake_cluster, stdout, stderr, files=results)


def test_dropped_connections_are_retried(
    scan: Callable[..., Outcome], fake_cluster: FakeCluster
) -> None:
    fake_cluster.drop_connections("POST", r"/roles$", times=2)
    out = scan("apps/web/app")
    assert out.exit_code == 0, out.stderr
    assert out.summaries[0]["status"] == "completed"
    posts = [r for r in fake_cluster.requests if r.method == "POST" and r.path.endswith("/roles")]
    assert len(posts) == 3


def test_json_logs_carry_the_scan_context(scan: Callable[..., Outcome]) -> None:
    out = scan("apps/web/app")
    events = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    by_name = {e["event"]: e for e in events}
    for name in ("scan.started", "credentials.minted", "credentials.revoked", "scan.finished"):
        e = by_name[name]
        assert e["run_id"] == out.summaries[0]["run_id"]
        assert e["scan_id"] == out.summaries[0]["scan_id"]
        assert (e["context"], e["namespace"], e["pod"], e["container"]) == (
            "fake",
            "apps",
            "web",
            "app",
        )


def test_status_of_a_local_run_reads_its_run_json(
    scan: Callable[..., Outcome], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scanfleet.cli import fleet as _register_fleet  # noqa: F401

    monkeypatch.setenv("SCANFLEET_KEY_PREFIX", f"test-{tmp_path.name}")
    out = scan("apps/web/app")
    assert out.run is not None
    res = CliRunner().invoke(
        main_group,
        ["status", out.run["run_id"], "--json", "--results-dir", str(tmp_path / "results")],
    )
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["state"] == "finished"
    assert doc["run"]["targets"] == out.run["targets"]
    missing = CliRunner().invoke(
        main_group, ["status", "20200101T000000Z-000000", "--results-dir", str(tmp_path)]
    )
    assert missing.exit_code == 2
    assert "20200101T000000Z-000000" in missing.stderr


def test_sigterm_stops_every_thread_of_a_local_run(
    fake_cluster: FakeCluster,
    admin_kubeconfig: Path,
    standin_auditor: str,
    auditor_plan: Callable[..., Path],
    tmp_path: Path,
    standin_io: Path,
) -> None:
    pids = standin_io / "pids"
    pids.mkdir()
    auditor_plan(
        {
            # Audits that outlast the test's timeout: waiting for them would hang the test.
            "apps/web/app": {"sleep": 3600, "pid_file": str(pids / "app")},
            "apps/web/sidecar": {"sleep": 3600, "pid_file": str(pids / "sidecar")},
        }
    )
    results = tmp_path / "results"
    env = {**os.environ, "SCANFLEET_AUDITOR": standin_auditor}
    proc = subprocess.Popen(
        [
            PY,
            "-c",
            "from scanfleet.cli import main; main()",
            "submit",
            "apps/web",
            "--local",
            "--concurrency",
            "2",
            "--profile",
            "p",
            "--kubeconfig",
            str(admin_kubeconfig),
            "--output",
            str(results),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while len(list(pids.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(list(pids.iterdir())) == 2, "both audits should be running"
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 3, stderr
    out = collect(results, proc.returncode, stdout, stderr)
    assert sorted(s["error"]["kind"] for s in out.summaries) == ["interrupted", "interrupted"]
    for f in pids.iterdir():
        with pytest.raises(ProcessLookupError):
            os.kill(json.loads(f.read_text())["pid"], 0)


def test_input_files_and_extra_auditor_arguments_reach_the_auditor(
    scan: Callable[..., Outcome],
    auditor_log: Callable[[], list[dict[str, Any]]],
    tmp_path: Path,
) -> None:
    inputs = tmp_path / "inputs.yml"
    inputs.write_text("disable_slow_controls: true\n")
    out = scan(
        "apps/web/app",
        "--input-file",
        str(inputs),
        "--auditor-arg=--controls",
        "--auditor-arg=SV-1",
    )
    assert out.exit_code == 0, out.stderr
    [rec] = auditor_log()
    argv = rec["argv"]
    # The auditor reports into the scan's private dir; scanfleet copies it to the results.
    reporter = Path(rec["kubeconfig"]).parent / "auditor" / "report.json"
    assert argv[1:] == [
        "exec",
        "profile-dir",
        "-t",
        "k8s-container://apps/web/app",
        "--reporter",
        f"json:{reporter}",
        "--input-file",
        str(inputs.resolve()),
        "--controls",
        "SV-1",
    ]
    assert out.run_dir is not None
    assert (out.run_dir / f"{out.summaries[0]['scan_id']}.report.json").is_file()
    assert rec["kubeconfig"] != os.environ.get("KUBECONFIG")


def test_an_auditor_that_echoes_its_token_does_not_leak_it(
    scan: Callable[..., Outcome],
    fake_cluster: FakeCluster,
    auditor_plan: Callable[..., Path],
) -> None:
    auditor_plan({"*": {"leak_token": True, "exit": 1}})
    out = scan("apps/web/app")
    assert out.exit_code == 3
    [s] = out.summaries
    assert s["error"]["kind"] == "auditor_exit"
    assert "debug: using token" in s["error"]["message"]
    assert_no_token_leak(fake_cluster, out.stdout, out.stderr, files=out.run_dir)


def test_an_unreachable_cluster_is_a_retryable_error_that_records_nothing(
    fake_cluster: FakeCluster,
    admin_kubeconfig: Path,
    standin_auditor: str,
    tmp_path: Path,
) -> None:
    from scanfleet.core.errors import ClusterUnavailable
    from scanfleet.core.targets import Target
    from scanfleet.kube.client import ClientCache
    from scanfleet.scan.plan import ScanOptions
    from scanfleet.scan.target import scan_target

    clients = ClientCache(str(admin_kubeconfig), retries=0)
    target = Target("fake", "apps", "web", "app")
    run_id = "20260101T000000Z-abcdef"
    options = ScanOptions(profile="p", auditor=standin_auditor)
    fake_cluster.fail("POST", r"/rolebindings$", 503, times=1)
    scanned = scan_target(clients, target, run_id, options, tmp_path, host=this_host())
    assert isinstance(scanned.error, ClusterUnavailable)
    assert scanned.error.retryable  # the fleet driver retries it; `scan` records it
    assert scanned.summary["error"] == {"kind": "api_error", "message": str(scanned.error)}
    assert not list(tmp_path.glob("*.json")), "scan_target leaves recording to the driver"
    assert fake_cluster.scanfleet_objects() == []
    clients.close()
