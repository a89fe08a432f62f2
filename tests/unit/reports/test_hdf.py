"""`report --format hdf`: one Heimdall file per target, checked with Heimdall's own parser.

inspecjs (npm, installed by .ci/run into tests/.node/) converts every file the way Heimdall
loads it; its counts must equal the target summary's, and the file must carry the target id
and scanfleet's metadata. Missing node or inspecjs fails the test under CI=true.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import scanfleet.cli.report as _report  # noqa: F401  (registers the command)
from scanfleet import __version__
from scanfleet.cli.common import main_group
from scanfleet.judging.documents import outcome
from scanfleet.reports.hdf import export, hdf_file_name
from scanfleet.store.files import iter_summaries, run_dir
from tests.support.bigrun import BIG_RUN_ID, write_big_run
from tests.support.paths import ROOT
from tests.support.report_runs import FULL, RUN_ID, write_run
from tests.support.tools import in_ci, require_tool

NODE_MODULES = ROOT / "tests" / ".node" / "node_modules"
COUNTS_JS = Path(__file__).with_name("hdf_counts.js")
STATUSES = ("passed", "failed", "skipped", "no_impact", "error")


def heimdall_counts(files: list[Path]) -> dict[str, dict[str, Any]]:
    """inspecjs's reading of each file: {file name: {counts, target_id, passthrough}}."""
    node = require_tool("node", "nodejs")
    if not (NODE_MODULES / "inspecjs").is_dir():
        reason = f"inspecjs is not installed in {NODE_MODULES} (npm install, see .ci/run)"
        if in_ci():
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)
    p = subprocess.run(
        [node, str(COUNTS_JS), *map(str, files)],
        env={**os.environ, "NODE_PATH": str(NODE_MODULES)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    out = {}
    for line in p.stdout.splitlines():
        data = json.loads(line)
        assert "error" not in data, data
        out[Path(data["file"]).name] = data
    return out


def report(*args: str) -> Result:
    return CliRunner().invoke(main_group, ["report", *args], catch_exceptions=False)


def sha256s(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.glob("*.report.json")
    }


def check_files(out: Path, summaries: list[dict[str, Any]], run: dict[str, Any]) -> None:
    scanned = [s for s in summaries if outcome(s) != "error"]
    files = sorted(out.iterdir())
    assert {f.name for f in files} == {hdf_file_name(s["target"]) for s in scanned}
    seen = heimdall_counts(files)
    assert len(seen) == len(scanned)
    for s in scanned:
        t = s["target"]
        name = f"{t['context']}_{t['namespace']}_{t['pod']}_{t['container']}.json"
        got = seen[name]
        assert got["counts"] == {k: s["counts"][k]["total"] for k in STATUSES}, name
        assert got["target_id"] == f"{t['context']}/{t['namespace']}/{t['pod']}/{t['container']}"
        meta = got["passthrough"]["scanfleet"]
        assert meta == {
            "run_id": run["run_id"],
            "scan_id": s["scan_id"],
            "covered_by": s.get("covered_by"),
            **{k: t[k] for k in ("context", "namespace", "pod", "container", "image")},
            "image_id": t["image_id"],
            "scanned_at": s["finished_at"],
            "scanfleet_version": __version__,
            "profile": run["profile"],
            "profile_sha256": s.get("profile_sha256") or run.get("profile_sha256"),
            "compliance": s["compliance"],
            "threshold": s["threshold"],
        }


def test_every_scanned_target_gets_a_named_hdf_file_heimdall_reads(tmp_path: Path) -> None:
    results = tmp_path / "results"
    run_dir(results, RUN_ID).mkdir(parents=True)
    run = write_run(results, FULL)
    directory = run_dir(results, RUN_ID)
    before = sha256s(directory)
    out = tmp_path / "hdf"
    r = report(RUN_ID, "--results-dir", str(results), "--format", "hdf", "--output", str(out))
    assert r.exit_code == run["exit_code"] == 1, r.stderr
    assert r.stdout == ""
    assert f"wrote 7 HDF files to {out}" in r.stderr
    assert "prod-west_db_backup-cron_app.json: could not be scanned" in r.stderr
    assert sha256s(directory) == before  # the raw reports are untouched
    summaries = list(iter_summaries(directory))
    check_files(out, summaries, run)
    # the covered target carries its covering scan's report, under its own name
    covered = json.loads((out / "prod-east_payments_worker-9x1z_app.json").read_text())
    assert covered["passthrough"]["scanfleet"]["covered_by"] is not None


def test_a_fleet_runs_files_all_convert_and_match_their_summaries(tmp_path: Path) -> None:
    results = tmp_path / "results"
    run = write_big_run(results, 60, reports=True)
    out = tmp_path / "hdf"
    r = report(BIG_RUN_ID, "--results-dir", str(results), "--format", "hdf", "--output", str(out))
    assert r.exit_code == 1, r.stderr
    check_files(out, list(iter_summaries(run_dir(results, BIG_RUN_ID))), run)


def test_names_are_filesystem_safe_and_unique() -> None:
    hostile = {
        "context": "arn:aws:eks:us-east-1:123:cluster/prod",
        "namespace": "ns",
        "pod": "../../etc/passwd",
        "container": "a b\\c",
    }
    name = hdf_file_name(hostile)
    assert name == "arn-aws-eks-us-east-1-123-cluster-prod_ns_etc-passwd_a-b-c.json"
    assert hdf_file_name({"pod": "p" * 300})[:-5].split("_")[2] == "p" * 60

    def summary(scan_id: str, pod: str) -> dict[str, Any]:
        return {
            "scan_id": scan_id,
            "target": {"context": "c", "namespace": "n", "pod": pod, "container": "x"},
            "status": "completed",
            "counts": {},
            "threshold": {"passed": True},
        }

    twins = [summary("s1", "a/b"), summary("s2", "a:b")]
    files = list(export({}, lambda: twins, lambda sid: b'{"profiles": []}'))
    assert [f.name for f in files] == ["c_n_a-b_x.json", "c_n_a-b_x_s2.json"]


def test_unreadable_report_is_named_not_fatal() -> None:
    s = {
        "scan_id": "s1",
        "target": {"context": "c", "namespace": "n", "pod": "p", "container": "x"},
        "status": "completed",
        "counts": {},
        "threshold": {"passed": True},
    }

    def missing(sid: str) -> bytes:
        raise FileNotFoundError(2, "No such file or directory")

    [f] = export({}, lambda: [s], missing)
    assert (f.data, f.problem) == (None, "report s1: No such file or directory")
    [f] = export({}, lambda: [s], lambda sid: b"{not json")
    assert f.problem is not None
    assert f.problem.startswith("report s1 is not JSON")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "hdf"], "--format hdf needs --output DIR or --heimdall-url URL"),
        (["--format", "hdf", "--output", "-"], "give --output DIR, not standard output"),
        (["--format", "hdf", "--output", "{file}"], "is a file"),
        (["--format", "json", "--output", "{dir}"], "is a directory; json is written to a file"),
    ],
)
def test_bad_hdf_output_exits_2(tmp_path: Path, args: list[str], message: str) -> None:
    results = tmp_path / "results"
    run_dir(results, RUN_ID).mkdir(parents=True)
    write_run(results, FULL)
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    args = [a.format(file=tmp_path / "file", dir=tmp_path / "dir") for a in args]
    r = report(RUN_ID, "--results-dir", str(results), *args)
    assert r.exit_code == 2
    assert message in r.stderr
    assert list((tmp_path / "dir").iterdir()) == []
