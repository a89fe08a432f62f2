"""A report is the auditor's output, and so the profile's: its size and depth are bounded
(`load_report`: SCANFLEET_REPORT_MAX_BYTES, MAX_DEPTH) and end as `invalid_report`, never a
traceback. Figures (time, memory) are printed by bench/bench_budgets.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from scanfleet.core.errors import InvalidReport
from scanfleet.judging.report import MAX_DEPTH, json_depth, load_report
from scanfleet.testing.bombs import big_report, deep_report
from tests.support.fixtures_auditor import SAMPLES
from tests.support.fixtures_fleet import run_cli

SAMPLE = SAMPLES / "rhel8_sample_oneOfEachControlStatus.json"


# The process's peak RSS in KiB. Not getrusage's ru_maxrss: after fork and exec it starts
# at the parent's peak (pytest's), which would hide the growth measured here.
HWM = "def hwm():\n    return int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])\n"


def test_a_report_nested_100000_deep_is_invalid_not_a_recursion_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_bytes(deep_report(100_000))
    with pytest.raises(InvalidReport) as info:
        load_report(path)
    assert "100006 levels deep" in str(info.value)
    assert f"at most {MAX_DEPTH}" in str(info.value)


def test_nesting_up_to_the_cap_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "ok.json"
    path.write_bytes(deep_report(MAX_DEPTH - 6))  # the report's own six levels around it
    [control] = load_report(path)
    assert control.id == "deep"
    path.write_bytes(deep_report(MAX_DEPTH - 5))
    with pytest.raises(InvalidReport):
        load_report(path)


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = json.dumps({"a": "[[[[{{{{" * 1000, "b": ['\\"[[', [1]], "c": '"]]]]'})
    assert json_depth(text.encode()) == 3
    assert json_depth(b"") == 0
    assert json_depth(b"[[[]]]") == 3


def test_a_report_over_the_byte_cap_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_bytes(big_report(100_000))
    assert load_report(path, max_bytes=100_000)[0].id == "big"
    with pytest.raises(InvalidReport) as info:
        load_report(path, max_bytes=99_999)
    assert "larger than 99999 bytes (SCANFLEET_REPORT_MAX_BYTES)" in str(info.value)


def test_reading_a_deep_report_keeps_memory_bounded(tmp_path: Path) -> None:
    """Loose: the 100,000-deep report costs a fresh interpreter less than 32 MB more."""
    path = tmp_path / "deep.json"
    path.write_bytes(deep_report(100_000))
    code = (
        "import sys\n"
        "from scanfleet.core.errors import InvalidReport\n"
        "from scanfleet.judging.report import load_report\n"
        f"{HWM}before = hwm()\n"
        "try:\n    load_report(sys.argv[1])\nexcept InvalidReport:\n    pass\n"
        "print(hwm() - before)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    assert int(out.stdout) < 32 * 1024, out.stdout  # KiB


@pytest.mark.parametrize(
    ("report", "env", "needle"),
    [
        ("deep", {}, "levels deep"),
        ("sample", {"SCANFLEET_REPORT_MAX_BYTES": "1000"}, "SCANFLEET_REPORT_MAX_BYTES"),
    ],
)
def test_scan_records_invalid_report_writes_run_json_and_exits_3(
    admin_kubeconfig: Path,
    standin_auditor: str,
    auditor_plan: Callable[..., Path],
    standin_io: Path,
    tmp_path: Path,
    report: str,
    env: dict[str, str],
    needle: str,
) -> None:
    if report == "deep":
        path = standin_io / "deep.json"
        path.write_bytes(deep_report(100_000))
    else:
        path = SAMPLE
    auditor_plan({"*": {"report": str(path), "exit": 100}})  # as InSpec, for a failure
    results = tmp_path / "results"
    proc = run_cli(
        [
            "scan",
            "apps/web/app",
            "--profile",
            "profile-dir",
            "--kubeconfig",
            str(admin_kubeconfig),
            "--output",
            str(results),
        ],
        {**os.environ, "SCANFLEET_AUDITOR": standin_auditor, **env},
    )
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[:6000]
    [run_dir] = [p for p in results.iterdir() if p.is_dir()]
    run = json.loads((run_dir / "run.json").read_text())
    assert run["targets"]["error"] == 1
    [summary] = [
        json.loads(p.read_text())
        for p in run_dir.glob("*.json")
        if p.name != "run.json" and not p.name.endswith(".report.json")
    ]
    assert summary["error"]["kind"] == "invalid_report"
    assert needle in summary["error"]["message"]
    assert summary["cleanup"] == "complete"


def test_a_bad_report_cap_is_bad_configuration(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANFLEET_")}
    env["SCANFLEET_REPORT_MAX_BYTES"] = "lots"
    proc = run_cli(["scan", "ns/pod/c", "--profile", "/p", "--output", str(tmp_path / "r")], env)
    assert proc.returncode == 2
    assert "SCANFLEET_REPORT_MAX_BYTES='lots'" in proc.stderr
