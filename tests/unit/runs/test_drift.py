"""Drift between two runs, from target summaries in run directories."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from scanfleet.runs.drift import DRIFT_FILE, diff_runs, previous_run, write_sweep_drift
from tests.support.fixtures_fleet import run_cli
from tests.support.fixtures_ops import make_run, summary

A = "20250101T020000Z-aaaaaa"
B = "20250102T020000Z-bbbbbb"


def two_runs(results: Path) -> tuple[Path, Path]:
    a = make_run(
        results,
        A,
        [
            summary(
                "prod",
                "apps",
                "web",
                "app",
                failed={"high": ["C-1"], "low": ["C-2"]},
                passed={"medium": ["C-3"]},
            ),
            summary("prod", "apps", "web", "sidecar", failed={"low": ["C-9"]}),
            summary("prod", "apps", "db", "pg", failed={"critical": ["C-5"]}),
            summary("prod", "apps", "old", "app"),
            summary("prod", "apps", "same", "app", failed={"low": ["C-7"]}),
        ],
    )
    b = make_run(
        results,
        B,
        [
            # C-2 fixed (now passed), C-3 newly failing, C-1 still failing
            summary(
                "prod",
                "apps",
                "web",
                "app",
                failed={"high": ["C-1"], "medium": ["C-3"]},
                passed={"low": ["C-2"]},
            ),
            # C-9 gone from the report entirely
            summary("prod", "apps", "web", "sidecar"),
            summary("prod", "apps", "db", "pg", status="error"),
            summary("prod", "apps", "new", "app", failed={"low": ["C-8"]}),
            summary("prod", "apps", "same", "app", failed={"low": ["C-7"]}),
        ],
    )
    return a, b


def test_control_status_changes_per_target(tmp_path: Path) -> None:
    a, b = two_runs(tmp_path)
    drift = diff_runs(a, b)
    assert drift["run_a"] == A
    assert drift["run_b"] == B
    changed = {c["target"]["pod"] + "/" + c["target"]["container"]: c for c in drift["changed"]}
    assert set(changed) == {"web/app", "web/sidecar", "db/pg"}  # "same" did not change
    web = changed["web/app"]
    assert web["newly_failing"] == [{"id": "C-3", "severity": "medium"}]
    assert web["fixed"] == [{"id": "C-2", "severity": "low", "now": "passed"}]
    assert "status_change" not in web
    assert changed["web/sidecar"]["fixed"] == [{"id": "C-9", "severity": "low", "now": "absent"}]
    db = changed["db/pg"]
    assert db["status_change"] == {"from": "completed", "to": "error"}
    assert db["error"]["kind"] == "timeout"
    assert db["newly_failing"] == []
    assert db["fixed"] == []  # an errored scan fixes nothing
    assert [x["target"]["pod"] for x in drift["appeared"]] == ["new"]
    assert [x["target"]["pod"] for x in drift["disappeared"]] == ["old"]
    assert drift["totals"] == {
        "targets_changed": 3,
        "newly_failing": 1,
        "fixed": 2,
        "status_changes": 1,
        "appeared": 1,
        "disappeared": 1,
    }


def test_reversed_direction_swaps_new_and_fixed(tmp_path: Path) -> None:
    a, b = two_runs(tmp_path)
    back = diff_runs(b, a)
    web = next(
        c
        for c in back["changed"]
        if c["target"]["pod"] == "web" and c["target"]["container"] == "app"
    )
    assert web["newly_failing"] == [{"id": "C-2", "severity": "low"}]
    assert web["fixed"] == [{"id": "C-3", "severity": "medium", "now": "passed"}]
    db = next(c for c in back["changed"] if c["target"]["pod"] == "db")
    assert db["status_change"] == {"from": "error", "to": "completed"}


def test_targets_are_matched_by_context_too(tmp_path: Path) -> None:
    a = make_run(tmp_path, A, [summary("east", "apps", "web", "app")])
    b = make_run(tmp_path, B, [summary("west", "apps", "web", "app")])
    drift = diff_runs(a, b)
    assert drift["appeared"][0]["target"]["context"] == "west"
    assert drift["disappeared"][0]["target"]["context"] == "east"


def test_sweep_drift_compares_with_the_previous_run_of_the_same_sweep(tmp_path: Path) -> None:
    make_run(
        tmp_path,
        "20250101T000000Z-000001",
        [summary("prod", "apps", "web", "app", failed={"high": ["C-1"]})],
        run={"source": "sweep:nightly"},
    )
    # Newer, but another sweep / a submit / unfinished: never the baseline.
    make_run(
        tmp_path,
        "20250101T010000Z-000002",
        [summary("prod", "apps", "web", "app")],
        run={"source": "sweep:hourly"},
    )
    make_run(
        tmp_path,
        "20250101T020000Z-000003",
        [summary("prod", "apps", "web", "app")],
        run={"source": "submit"},
    )
    make_run(tmp_path, "20250101T030000Z-000004", [summary("prod", "apps", "web", "app")])
    (tmp_path / "notes").mkdir()
    new = "20250102T000000Z-000005"
    make_run(
        tmp_path,
        new,
        [summary("prod", "apps", "web", "app", failed={"low": ["C-4"]})],
        run={"source": "sweep:nightly"},
    )
    assert previous_run(tmp_path, new, "sweep:nightly") == "20250101T000000Z-000001"
    drift = write_sweep_drift(tmp_path, {"run_id": new, "source": "sweep:nightly"})
    assert drift is not None
    on_disk = json.loads((tmp_path / new / DRIFT_FILE).read_text())
    assert on_disk == drift
    assert on_disk["source"] == "sweep:nightly"
    assert on_disk["run_a"] == "20250101T000000Z-000001"
    (change,) = on_disk["changed"]
    assert change["newly_failing"] == [{"id": "C-4", "severity": "low"}]
    assert change["fixed"] == [{"id": "C-1", "severity": "high", "now": "absent"}]


def test_first_sweep_run_and_non_sweep_runs(tmp_path: Path) -> None:
    first = "20250101T000000Z-000001"
    make_run(
        tmp_path, first, [summary("prod", "apps", "web", "app")], run={"source": "sweep:nightly"}
    )
    drift = write_sweep_drift(tmp_path, {"run_id": first, "source": "sweep:nightly"})
    assert drift is not None
    assert drift["run_a"] is None
    assert drift["changed"] == []
    assert (tmp_path / first / DRIFT_FILE).is_file()
    other = "20250101T000000Z-000002"
    make_run(tmp_path, other, [], run={"source": "submit"})
    assert write_sweep_drift(tmp_path, {"run_id": other, "source": "submit"}) is None
    assert not (tmp_path / other / DRIFT_FILE).exists()


def test_diff_cli(tmp_path: Path) -> None:
    two_runs(tmp_path)

    env = {
        "PATH": "/usr/bin:/bin",
        "SCANFLEET_RESULTS_DIR": str(tmp_path),
        "SCANFLEET_LOG_FORMAT": "console",
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(["diff", *args], env, timeout=60)

    r = run(A, B)
    assert r.returncode == 0, r.stderr
    assert "NEW FAIL prod:apps/web/app: C-3 (medium)" in r.stdout
    assert "FIXED prod:apps/web/app: C-2 (now passed)" in r.stdout
    assert "STATUS prod:apps/db/pg: completed -> error" in r.stdout
    assert "APPEARED prod:apps/new/app" in r.stdout
    assert "GONE prod:apps/old/app" in r.stdout
    j = run(A, B, "--json")
    assert json.loads(j.stdout)["totals"]["newly_failing"] == 1
    # Paths work too; a bad run id is bad input.
    assert run(str(tmp_path / A), str(tmp_path / B)).returncode == 0
    bad = run(A, "nope")
    assert bad.returncode == 2
    assert "invalid run id 'nope'" in bad.stderr
    missing = run(A, "20300101T000000Z-abcdef")
    assert missing.returncode == 2
