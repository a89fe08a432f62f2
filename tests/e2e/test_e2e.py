"""End-to-end against a real cluster (kind): run with SCANFLEET_E2E_KUBECONFIG set.

    kind create cluster && kubectl run e2e --image=registry.access.redhat.com/ubi9/ubi \
        --command -- sleep infinity
    SCANFLEET_E2E_KUBECONFIG=~/.kube/config SCANFLEET_E2E_TARGET=default/e2e/e2e \
    SCANFLEET_E2E_PROFILE=https://github.com/mitre/redhat-enterprise-linux-9-stig-baseline \
        python -m pytest -m e2e

Needs cinc-auditor with train-k8s-container-mitre (SCANFLEET_AUDITOR) and kubectl on PATH.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.tools import require_tool

KUBECONFIG = os.environ.get("SCANFLEET_E2E_KUBECONFIG")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not KUBECONFIG, reason="SCANFLEET_E2E_KUBECONFIG is not set"),
    pytest.mark.timeout(3600),
]


def test_scan_a_real_pod_and_leave_nothing_behind(tmp_path: Path) -> None:
    assert KUBECONFIG is not None
    target = os.environ.get("SCANFLEET_E2E_TARGET", "default/e2e/e2e")
    profile = os.environ.get("SCANFLEET_E2E_PROFILE", "")
    if not profile:
        pytest.skip("SCANFLEET_E2E_PROFILE is not set")
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            "from scanfleet.cli import main; main()",
            "scan",
            target,
            "--profile",
            profile,
            "--kubeconfig",
            KUBECONFIG,
            "--output",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=3500,
        check=False,
    )
    assert res.returncode in (0, 1), res.stderr[-4000:]
    [run_dir] = [p for p in tmp_path.iterdir() if p.is_dir()]
    run = json.loads((run_dir / "run.json").read_text())
    assert run["targets"]["completed"] == run["targets"]["total"]
    for kind in ("serviceaccounts", "roles", "rolebindings"):
        left = subprocess.run(
            [
                require_tool("kubectl"),
                "--kubeconfig",
                KUBECONFIG,
                "get",
                kind,
                "-A",
                "-l",
                "app.kubernetes.io/managed-by=scanfleet",
                "-o",
                "name",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert left.stdout.strip() == "", left.stdout
