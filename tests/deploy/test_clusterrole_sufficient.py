"""deploy/clusterrole.yaml is not only small enough (test_deploy) but sufficient.

The fake API server restricts the admin identity to exactly those rules and enforces
Kubernetes' RBAC escalation check, so a full scan and a janitor pass must still succeed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from scanfleet.cli import main_group
from scanfleet.cli import scan as _register_scan  # noqa: F401
from scanfleet.core.targets import Target
from scanfleet.identity.mint import identity_objects
from scanfleet.kube.client import KubeClient
from scanfleet.testing.fakekube import FakeCluster
from tests.support.paths import ROOT

CLUSTERROLE = ROOT / "deploy" / "clusterrole.yaml"


def clusterrole_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(CLUSTERROLE.read_text())
    assert doc["kind"] == "ClusterRole"
    rules: list[dict[str, Any]] = doc["rules"]
    return rules


def scan(kubeconfig: Path, auditor: str, out: Path) -> Any:
    return CliRunner(env={"SCANFLEET_AUDITOR": auditor}).invoke(
        main_group,
        [
            "scan",
            "apps/web/app",
            "--profile",
            "p",
            "--kubeconfig",
            str(kubeconfig),
            "--output",
            str(out),
        ],
        catch_exceptions=False,
    )


def test_a_full_scan_succeeds_with_exactly_the_clusterrole(
    fake_cluster: FakeCluster,
    admin_kubeconfig: Path,
    standin_auditor: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_cluster.set_admin_rules(clusterrole_rules())
    res = scan(admin_kubeconfig, standin_auditor, tmp_path)
    assert res.exit_code == 0, res.stderr
    assert fake_cluster.scanfleet_objects() == []


def test_without_pods_exec_kubernetes_refuses_to_let_scanfleet_grant_it(
    fake_cluster: FakeCluster,
    admin_kubeconfig: Path,
    standin_auditor: str,
    tmp_path: Path,
) -> None:
    rules = [r for r in clusterrole_rules() if r["resources"] != ["pods/exec"]]
    fake_cluster.set_admin_rules(rules)
    res = scan(admin_kubeconfig, standin_auditor, tmp_path / "results")
    assert res.exit_code == 3, res.stderr
    [run_dir] = [p for p in (tmp_path / "results").iterdir() if p.is_dir()]
    [summary] = [
        json.loads(p.read_text())
        for p in run_dir.glob("*.json")
        if p.name != "run.json" and not p.name.endswith(".report.json")
    ]
    # Kubernetes' escalation check refuses the Role: that is `forbidden`, not some other
    # exit-3 error (an unreachable cluster or a crashed auditor would also exit 3).
    assert summary["error"]["kind"] == "forbidden", summary["error"]
    assert "pods/exec" in summary["error"]["message"]
    assert not list(run_dir.glob("*.report.json"))
    assert fake_cluster.scanfleet_objects() == []


def test_a_janitor_pass_succeeds_with_exactly_the_clusterrole(
    fake_cluster: FakeCluster, admin_kubeconfig: Path
) -> None:
    from scanfleet.identity.janitor import JanitorReport, sweep_context

    kube = KubeClient(str(admin_kubeconfig), "fake")
    past = datetime.now(UTC) - timedelta(hours=2)
    for kind, body in identity_objects(
        "00000000000000aa", "r", Target("fake", "apps", "web", "app"), 600, past
    ).items():
        kube.create_object(kind, "apps", body)
    fake_cluster.set_admin_rules(clusterrole_rules())
    report = JanitorReport(dry_run=False)
    sweep_context("fake", kube, now=datetime.now(UTC), dry_run=False, report=report)
    assert report.ok, report.to_dict()
    assert len(report.deleted) == 3
    assert fake_cluster.scanfleet_objects() == []
    kube.close()
