"""`scanfleet.testing`, the public testing module: a simulated cluster and the stand-in
auditor drive the real `scanfleet` command, as a user's own CI gate test would."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from scanfleet.testing import REPORTS, SAMPLES, report, simulated_cluster, standin_auditor
from scanfleet.testing.auditor import STANDIN
from scanfleet.testing.fakekube import FakeCluster
from tests.support.paths import SAMPLES as SAMPLES_DIR

CLI = [sys.executable, "-c", "from scanfleet.cli import main; main()"]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("SCANFLEET_", "KUBECONFIG"))}


def run(argv: list[str], reporter: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*argv, f"json:{reporter}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("use_kubectl", [None, False])
def test_a_user_gate_runs_against_the_simulated_cluster(
    tmp_path: Path, use_kubectl: bool | None
) -> None:
    plan = {
        "apps/web": {"report": str(report("red_hat_good.json"))},
        "apps/api": {"report": str(report("minimal_hdf.json"))},
    }
    with (
        simulated_cluster({"apps": ["web", "api"], "ops": []}) as sim,
        standin_auditor(plan=plan, use_kubectl=use_kubectl) as auditor,
    ):
        assert sim.kubeconfig.stat().st_mode & 0o777 == 0o600
        assert sim.kubeconfig.parent.stat().st_mode & 0o777 == 0o700
        proc = subprocess.run(
            [
                *CLI,
                "submit",
                "--kubeconfig",
                str(sim.kubeconfig),
                "--all-namespaces",
                "--profile",
                str(SAMPLES / "profile"),
                "--threshold",
                str(SAMPLES / "threshold.yml"),
                "--local",
                "--output",
                str(tmp_path / "results"),
            ],
            env={**clean_env(), **sim.env, **auditor.env},
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert proc.returncode == 1, proc.stderr[-3000:]  # api misses the threshold
        run_id = proc.stdout.splitlines()[0]
        run = json.loads((tmp_path / "results" / run_id / "run.json").read_text())
        assert (run["targets"]["passed"], run["targets"]["failed"]) == (1, 1)
        # The stand-in exec'd into each pod with the scan's own identity, never the admin's.
        attempts = sim.cluster.exec_attempts
        assert sorted(a.pod for a in attempts if a.allowed) == ["api", "web"]
        assert all(a.identity.startswith("system:serviceaccount:") for a in attempts)
        assert sim.cluster.scanfleet_objects() == []
        directory, url = sim.kubeconfig.parent, sim.cluster.url
    # Afterwards the API server is stopped and its admin kubeconfig is gone.
    assert not directory.exists()
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), 2):
        pass


def test_the_standin_refuses_a_credential_the_cluster_does_not_accept(
    fake_cluster: FakeCluster, tmp_path: Path
) -> None:
    """Without kubectl the stand-in execs with the Python client, and still authenticates:
    a token the API server does not know fails the audit (exit 1, no report)."""
    kube = tmp_path / "kube"
    kube.mkdir(mode=0o700)
    config = fake_cluster.write_kubeconfig(kube / "config", token="not-a-token")
    config.chmod(0o600)
    reporter = tmp_path / "report.json"
    target = "k8s-container://apps/web/app"
    env = {**clean_env(), "KUBECONFIG": str(config), "SCANFLEET_STANDIN_EXEC": "client"}
    argv = [sys.executable, str(STANDIN), "exec", "p", "-t", target, "--reporter"]
    proc = run(argv, reporter, env)
    assert proc.returncode == 1
    assert "exec into apps/web/app refused: 401" in proc.stderr, proc.stderr
    assert "not-a-token" not in proc.stderr
    assert not reporter.exists()
    # The admin's own credential gets in, and the default report is the bundled sample.
    fake_cluster.write_kubeconfig(config).chmod(0o600)
    proc = run(argv, reporter, env)
    assert proc.returncode == 100, proc.stderr
    assert reporter.read_bytes() == report("minimal_hdf.json").read_bytes()


def test_the_bundled_reports_are_unchanged_copies_of_the_test_samples() -> None:
    """One set of real reports: the package's copies stay byte-identical to tests/data's
    (whose SOURCES.md says where each came from), and the package says so too."""
    bundled = sorted(REPORTS.glob("*.json"))
    assert len(bundled) >= 5
    for path in bundled:
        assert path.read_bytes() == (SAMPLES_DIR / path.name).read_bytes(), path.name
    sources = (REPORTS / "SOURCES.md").read_text()
    for path in bundled:
        assert f"`{path.name}`" in sources
