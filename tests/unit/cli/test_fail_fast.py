"""Fail fast, say why, exit 2 or 3, never a traceback (issue 18, item 2).

Every case runs the real CLI in a subprocess, as an operator does, and asserts the exit
code, the one-line message on stderr, the time it took and that no traceback was printed;
the cases that could create something also check that the fake API server saw nothing
created (or, for Redis, nothing at all: the check comes before discovery).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from scanfleet.testing.fakekube import FakeCluster
from tests.support.fixtures_fleet import CLI

BOUND = 5.0
"""Seconds any of these failures may take (the issue's bound), start-up included."""
RUN_ID = "20250101T000000Z-abcdef"


@dataclass
class Failure:
    code: int
    stdout: str
    stderr: str
    seconds: float

    def line(self) -> str:
        """The one message line on stderr besides JSON log lines (the test fails if there
        are more or none)."""
        lines = [ln for ln in self.stderr.splitlines() if ln.strip() and ln[0] != "{"]
        assert len(lines) == 1, f"expected one line on stderr, got:\n{self.stderr}"
        assert lines[0].startswith("scanfleet: error: "), lines[0]
        return lines[0]


def run(args: list[str], env: Mapping[str, str], timeout: float = 60) -> Failure:
    started = time.monotonic()
    proc = subprocess.run(
        [*CLI, *args], env=dict(env), capture_output=True, text=True, timeout=timeout, check=False
    )
    seconds = time.monotonic() - started
    assert "Traceback" not in proc.stderr, proc.stderr
    return Failure(proc.returncode, proc.stdout, proc.stderr, seconds)


@pytest.fixture
def env(standin_auditor: str, tmp_path: Path) -> dict[str, str]:
    """The environment of an operator's shell: the stand-in auditor, JSON logs off a TTY."""
    e = dict(os.environ)
    e.pop("KUBECONFIG", None)
    e.update(
        SCANFLEET_AUDITOR=standin_auditor,
        SCANFLEET_RESULTS_DIR=str(tmp_path / "results"),
        SCANFLEET_LOG_FORMAT="json",
    )
    return e


@pytest.fixture
def profile(tmp_path: Path) -> str:
    d = tmp_path / "profile"
    d.mkdir()
    (d / "inspec.yml").write_text("name: p\n")
    return str(d)


@pytest.fixture
def kube_args(admin_kubeconfig: Path) -> list[str]:
    return ["--kubeconfig", str(admin_kubeconfig), "--context", "fake"]


def created(cluster: FakeCluster) -> list[str]:
    return [f"{r.method} {r.path}" for r in cluster.requests if r.method != "GET"]


def _sweeps(profile: str) -> dict[str, object]:
    return {
        "sweeps": [
            {"name": "n", "schedule": "0 3 * * *", "profile": profile, "namespaces": ["apps"]}
        ]
    }


# -- the broker -------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["redis//localhost:6379/0", "redis://localhost:port/0"])
@pytest.mark.parametrize("command", ["status", "submit", "worker", "beat", "prune"])
def test_a_malformed_broker_url_is_one_line_and_exit_2(
    url: str,
    command: str,
    env: dict[str, str],
    fake_cluster: FakeCluster,
    kube_args: list[str],
    profile: str,
    write_sweeps: Callable[..., Path],
) -> None:
    args = {
        "status": ["status", RUN_ID],
        "submit": ["submit", "apps/web/app", *kube_args, "--profile", profile],
        "worker": ["worker", "-c", "1"],
        "beat": ["beat", "--sweeps", str(write_sweeps(_sweeps(profile)))],
        "prune": ["prune"],
    }[command]
    out = run(args, {**env, "SCANFLEET_BROKER_URL": url})
    assert out.code == 2, out.stderr
    line = out.line()
    assert "malformed broker URL" in line
    assert repr(url) in line
    assert out.seconds < BOUND
    assert fake_cluster.requests == []


def test_the_broker_url_password_is_not_shown(env: dict[str, str]) -> None:
    out = run(["status", RUN_ID], {**env, "SCANFLEET_BROKER_URL": "redis://:hunter22@h:x/0"})
    assert out.code == 2
    assert "hunter22" not in out.stderr


@pytest.mark.parametrize("command", ["submit", "status", "worker", "beat", "prune"])
def test_unreachable_redis_fails_within_seconds_before_any_discovery(
    command: str,
    env: dict[str, str],
    fake_cluster: FakeCluster,
    kube_args: list[str],
    profile: str,
    closed_port: int,
    write_sweeps: Callable[..., Path],
) -> None:
    args = {
        "submit": ["submit", "-n", "apps", *kube_args, "--profile", profile],
        "status": ["status", RUN_ID],
        "worker": ["worker", "-c", "1"],
        "beat": ["beat", "--sweeps", str(write_sweeps(_sweeps(profile)))],
        "prune": ["prune"],
    }[command]
    out = run(args, {**env, "SCANFLEET_BROKER_URL": f"redis://127.0.0.1:{closed_port}/0"})
    assert out.code == 3, out.stderr
    line = out.line()
    assert f"Redis at 127.0.0.1:{closed_port} is unreachable" in line
    assert "Connection refused" in line
    assert out.seconds < BOUND
    assert fake_cluster.requests == [], "nothing may be discovered without a broker"


# -- the API server ---------------------------------------------------------------------


def _pointed_at(kubeconfig: Path, server: str) -> Path:
    """The admin kubeconfig with its server replaced (same CA and credentials)."""
    cfg = yaml.safe_load(kubeconfig.read_text())
    cfg["clusters"][0]["cluster"]["server"] = server
    out = kubeconfig.with_name("pointed")
    out.write_text(yaml.safe_dump(cfg))
    return out


@pytest.mark.parametrize("command", ["scan", "submit-local", "submit"])
def test_an_api_server_on_a_closed_port_is_named_with_the_errno(
    command: str,
    env: dict[str, str],
    admin_kubeconfig: Path,
    profile: str,
    closed_port: int,
    ops_redis: str,
) -> None:
    server = f"https://127.0.0.1:{closed_port}"
    kcfg = ["--kubeconfig", str(_pointed_at(admin_kubeconfig, server)), "--context", "fake"]
    args = {
        "scan": ["scan", "apps/web/app", *kcfg, "--profile", profile],
        "submit-local": ["submit", "-n", "apps", *kcfg, "--profile", profile, "--local"],
        "submit": ["submit", "-n", "apps", *kcfg, "--profile", profile],
    }[command]
    out = run(args, {**env, "SCANFLEET_BROKER_URL": ops_redis})
    assert out.code == 3, out.stderr
    line = out.line()
    assert f"cannot reach the API server {server} (context 'fake')" in line
    assert "[Errno 111] Connection refused" in line
    assert "MaxRetryError" not in line
    assert "NewConnectionError" not in line
    assert out.seconds < BOUND
    assert not (Path(env["SCANFLEET_RESULTS_DIR"])).exists(), "no run may be recorded"


def test_an_api_server_whose_tls_is_refused_is_named_with_the_tls_reason(
    env: dict[str, str],
    admin_kubeconfig: Path,
    make_cluster: Callable[..., FakeCluster],
    profile: str,
) -> None:
    other = make_cluster(name="other")  # its certificate is not signed by our CA
    kcfg = _pointed_at(admin_kubeconfig, other.url)
    out = run(["scan", "apps/web/app", "--kubeconfig", str(kcfg), "--profile", profile], env)
    assert out.code == 3, out.stderr
    line = out.line()
    assert f"cannot reach the API server {other.url}" in line
    assert "TLS: [SSL: CERTIFICATE_VERIFY_FAILED]" in line
    assert out.seconds < BOUND
    assert other.requests == []


# -- local runs: the auditor and the profile ---------------------------------------------


@pytest.mark.parametrize("command", ["scan", "submit"])
def test_a_missing_auditor_is_exit_2_before_any_service_account(
    command: str,
    env: dict[str, str],
    fake_cluster: FakeCluster,
    kube_args: list[str],
    profile: str,
) -> None:
    args = ["scan", "apps/web/app"] if command == "scan" else ["submit", "-n", "apps", "--local"]
    out = run([*args, *kube_args, "--profile", profile], {**env, "SCANFLEET_AUDITOR": "nope-x"})
    assert out.code == 2, out.stderr
    assert "auditor executable 'nope-x' not found" in out.line()
    assert out.seconds < BOUND
    assert created(fake_cluster) == []


@pytest.mark.parametrize("command", ["scan", "submit"])
def test_a_profile_path_that_does_not_exist_is_exit_2_before_anything(
    command: str,
    env: dict[str, str],
    fake_cluster: FakeCluster,
    kube_args: list[str],
    tmp_path: Path,
) -> None:
    missing = str(tmp_path / "no-such-profile")
    args = ["scan", "apps/web/app"] if command == "scan" else ["submit", "-n", "apps", "--local"]
    out = run([*args, *kube_args, "--profile", missing], env)
    assert out.code == 2, out.stderr
    assert f"profile path {missing!r} does not exist" in out.line()
    assert out.seconds < BOUND
    assert created(fake_cluster) == []


# -- discovery that matches nothing -----------------------------------------------------


@pytest.mark.parametrize("fleet", [False, True])
def test_a_namespace_that_does_not_exist_is_exit_2(
    fleet: bool,
    env: dict[str, str],
    fake_cluster: FakeCluster,
    kube_args: list[str],
    profile: str,
    ops_redis: str,
) -> None:
    local = [] if fleet else ["--local"]
    out = run(
        ["submit", "-n", "apps", "-n", "aps", *kube_args, "--profile", profile, *local],
        {**env, "SCANFLEET_BROKER_URL": ops_redis},
    )
    assert out.code == 2, out.stderr
    assert "no running pods matched: namespace 'aps' does not exist in context 'fake'" in (
        out.line()
    )
    assert out.seconds < BOUND
    assert created(fake_cluster) == []


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["-n", "apps", "-l", "app=nothing"], "selector 'app=nothing' in namespace 'apps'"),
        (["-n", "other"], "namespace 'other'"),
        (["-A", "--exclude-namespace", "apps"], "every namespace except 'apps'"),
    ],
)
def test_discovery_that_matches_no_running_pod_is_exit_2(
    args: list[str],
    said: str,
    env: dict[str, str],
    fake_cluster: FakeCluster,
    kube_args: list[str],
    profile: str,
) -> None:
    out = run(["submit", *args, *kube_args, "--profile", profile, "--local"], env)
    assert out.code == 2, out.stderr
    assert f"no running pods matched {said} of context 'fake'; nothing queued" in out.line()
    assert out.seconds < BOUND
    assert created(fake_cluster) == []
    assert not Path(env["SCANFLEET_RESULTS_DIR"]).exists()
