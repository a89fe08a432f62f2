"""Every results command reads an s3:// location as it reads a directory.

One set of runs (a sweep's three, another sweep's, a plain submit; with raw reports) is
written to a directory and copied object by object into a bucket (moto's S3 server on
loopback). Each command then runs against both, and must print the same: `runs`,
`latest`, `report` in every format, `report --format hdf`, `report --sweep` trends,
`diff --exit-code` and `status` of a run Redis does not know.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import scanfleet.cli.fleet as _fleet  # noqa: F401  (registers the commands)
import scanfleet.cli.ops as _ops  # noqa: F401
import scanfleet.cli.report as _report  # noqa: F401
from scanfleet.cli.common import main_group
from tests.support.bigrun import write_big_run
from tests.support.fixtures_s3 import S3Server

RUNS = [
    ("20260301T020000Z-000001", 6, 0, "sweep:nightly"),
    ("20260302T020000Z-000002", 5, 0, "sweep:nightly"),
    ("20260303T020000Z-000003", 3, 3, "sweep:nightly"),
    ("20260304T020000Z-00000a", 2, 0, "sweep:other"),
    ("20260305T020000Z-00000b", 2, 0, "submit"),
]
LATEST = RUNS[-1][0]


@pytest.fixture
def locations(
    tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, str]:
    """(a results directory, the same runs at s3://bucket/prefix)."""
    local = tmp_path / "results"
    for run_id, n, offset, source in RUNS:
        write_big_run(local, n, run_id, offset=offset, source=source, reports=True)
    (local / "20260306T020000Z-00000c").mkdir()  # a run that has not finished
    (local / "20260306T020000Z-00000c" / "s.json").write_text("{}")
    bucket = s3_server.bucket()
    client = s3_server.client()
    for path in sorted(local.rglob("*")):
        if path.is_file():
            key = f"scans/{path.relative_to(local).as_posix()}"
            client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("SCANFLEET_BROKER_URL", "redis://127.0.0.1:1/0")  # no Redis at all
    monkeypatch.delenv("SCANFLEET_RESULTS_DIR", raising=False)
    return str(local), f"s3://{bucket}/scans"


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main_group, list(args), catch_exceptions=False)


def both(locations: tuple[str, str], *args: str, option: str = "--results-dir") -> list[Result]:
    return [invoke(*args, option, where) for where in locations]


def test_runs_lists_the_same_runs_from_a_bucket(locations: tuple[str, str]) -> None:
    local, s3 = both(locations, "runs", "--json")
    assert local.exit_code == s3.exit_code == 0, s3.stderr
    rows = json.loads(s3.stdout)
    assert rows == json.loads(local.stdout)
    assert [r["run_id"] for r in rows][1:] == [r[0] for r in reversed(RUNS)]
    assert rows[0]["state"] == "unfinished"
    assert {r["source"] for r in rows if r["state"] == "finished"} == {
        "sweep:nightly",
        "sweep:other",
        "submit",
    }
    table = invoke("runs", "--results-dir", locations[1])
    assert table.exit_code == 0
    assert LATEST in table.stdout


@pytest.mark.parametrize("fmt", ["json", "markdown", "junit", "html"])
def test_report_latest_is_the_same_from_a_bucket(locations: tuple[str, str], fmt: str) -> None:
    local, s3 = both(locations, "report", "latest", "--format", fmt)
    # `latest` is the unfinished run: both say so, exit 2
    assert local.exit_code == s3.exit_code == 2
    assert "has not finished" in s3.stderr
    local, s3 = both(locations, "report", LATEST, "--format", fmt)
    assert local.exit_code == s3.exit_code
    assert s3.stdout == local.stdout
    assert s3.stdout


def test_report_hdf_reads_the_reports_from_a_bucket(
    locations: tuple[str, str], tmp_path: Path
) -> None:
    outs = [tmp_path / "hdf-local", tmp_path / "hdf-s3"]
    results = [
        invoke("report", RUNS[2][0], "--format", "hdf", "--output", str(out), "--results-dir", w)
        for out, w in zip(outs, locations, strict=True)
    ]
    assert results[0].exit_code == results[1].exit_code, results[1].stderr
    files = [sorted(p.name for p in out.iterdir()) for out in outs]
    assert files[0] == files[1]
    assert len(files[1]) == RUNS[2][1]
    for name in files[1]:
        assert (outs[1] / name).read_bytes() == (outs[0] / name).read_bytes()


def test_report_sweep_trend_from_a_bucket(locations: tuple[str, str]) -> None:
    local, s3 = both(locations, "report", "--sweep", "nightly", "--format", "json")
    assert local.exit_code == s3.exit_code, s3.stderr
    trend: dict[str, Any] = json.loads(s3.stdout)
    assert trend == json.loads(local.stdout)
    assert [r["run_id"] for r in trend["runs"]] == [r[0] for r in RUNS[:3]]
    assert trend["changes"]["newly_failing"] or trend["changes"]["fixed"]


def test_diff_exit_code_from_a_bucket(locations: tuple[str, str]) -> None:
    a, b = RUNS[1][0], RUNS[2][0]
    local, s3 = both(locations, "diff", a, b, "--json", "--exit-code")
    assert local.exit_code == s3.exit_code
    assert json.loads(s3.stdout) == json.loads(local.stdout)
    assert s3.exit_code == (1 if json.loads(s3.stdout)["totals"]["newly_failing"] else 0)
    missing = invoke("diff", a, "20990101T000000Z-ffffff", "--results-dir", locations[1])
    assert missing.exit_code == 2
    assert "does not exist" in missing.stderr


def test_status_of_a_run_redis_does_not_know_from_a_bucket(locations: tuple[str, str]) -> None:
    local, s3 = both(locations, "status", LATEST, "--json")
    assert local.exit_code == s3.exit_code == 0, s3.stderr
    assert json.loads(s3.stdout) == json.loads(local.stdout)
    assert json.loads(s3.stdout)["state"] == "finished"
    running = invoke("status", "latest", "--json", "--results-dir", locations[1])
    assert running.exit_code == 0, running.stderr
    assert json.loads(running.stdout)["state"] == "running"
