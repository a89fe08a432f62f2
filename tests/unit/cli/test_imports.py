"""`scanfleet --help`, `--version` and `status` stay light: no kubernetes, no celery, no S3
client on local results.

Those libraries take seconds to import; the commands that need them load them lazily.
`submit --local` needs the kubernetes client's kubeconfig loading and connection pool, but
neither its generated API classes and models (a second of CPU) nor redis or celery.
Each case runs the real CLI in a fresh interpreter and inspects `sys.modules` after it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scanfleet.store.files import write_json
from scanfleet.testing.fakekube import FakeCluster

PROBE = """
import json, sys
from scanfleet.cli import main
sys.argv = ["scanfleet", *json.loads(sys.argv[1])]
code = 0
try:
    main()
except SystemExit as e:
    code = e.code
heavy = sorted({m.split(".")[0] for m in sys.modules}
            & {"kubernetes", "celery", "kombu", "obstore", "boto3", "botocore"})
generated = any(m.startswith(("kubernetes.client.api.", "kubernetes.client.models."))
                for m in sys.modules)
others = {"redis": "redis" in sys.modules, "generated": generated, "code": code}
print("\\nOTHERS " + json.dumps(others))
print("\\nMODULES " + json.dumps(heavy))
"""
RUN = "20260101T000000Z-abcdef"


def _probe(args: list[str], tmp_path: Path) -> tuple[list[str], dict[str, Any]]:
    env = {
        **os.environ,
        "SCANFLEET_RESULTS_DIR": str(tmp_path),
        "SCANFLEET_KEY_PREFIX": "sftest-cli-imports",
    }
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    line = proc.stdout.rsplit("MODULES ", 1)
    assert len(line) == 2, proc.stderr[-2000:]
    others = json.loads(proc.stdout.rsplit("OTHERS ", 1)[1].splitlines()[0])
    return list(json.loads(line[1])), others


def _loaded(args: list[str], tmp_path: Path) -> list[str]:
    return _probe(args, tmp_path)[0]


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["status", RUN]])
def test_light_commands_import_neither_kubernetes_nor_celery(
    args: list[str], tmp_path: Path
) -> None:
    write_json(
        tmp_path / RUN / "run.json",
        {
            "run_id": RUN,
            "targets": {"total": 0, "completed": 0, "error": 0, "passed": 0, "failed": 0},
            "counts": {
                s: {"total": 0} for s in ("passed", "failed", "skipped", "no_impact", "error")
            },
            "compliance": 100,
            "exit_code": 0,
        },
    )
    assert _loaded(args, tmp_path) == []


def test_the_probe_sees_a_heavy_import(tmp_path: Path) -> None:
    """The check can fail: `submit` loads the Kubernetes client (then fails on the path)."""
    assert "kubernetes" in _loaded(
        ["submit", "--profile", "p", "--kubeconfig", str(tmp_path / "missing"), "apps/web"],
        tmp_path,
    )


def test_a_local_scan_imports_no_generated_api_no_redis_no_celery(
    fake_cluster: FakeCluster,
    admin_kubeconfig: Path,
    standin_auditor: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SCANFLEET_AUDITOR", standin_auditor)
    results = tmp_path / "results"
    heavy, others = _probe(
        ["submit", "--local", "--kubeconfig", str(admin_kubeconfig), "--profile", "p", "apps/web"],
        results,
    )
    assert others["code"] in (0, 1), "the scans ran (a threshold verdict, not an error)"
    assert heavy == ["kubernetes"]
    # kubernetes < 37 (the old generator) imports every API class with the package itself.
    eager = (
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import kubernetes, sys; "
                "print(any(m.startswith('kubernetes.client.api.') for m in sys.modules))",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
        == "True"
    )
    assert others == {"redis": False, "generated": eager, "code": others["code"]}
