"""Retention: only run directories, by their run id's age; Redis keys through the store."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from scanfleet.runs.retention import prune, run_time
from tests.support.fixtures_fleet import run_cli
from tests.support.fixtures_ops import make_run

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
OLD = "20250101T000000Z-000001"  # 59 days
EDGE = "20250130T115959Z-000002"  # 30 days and 1 s
YOUNG = "20250130T120001Z-000003"  # 29 days 23:59:59
NEW = "20250301T000000Z-000004"


class FakeKeys:
    def __init__(self) -> None:
        self.deleted: list[str] = []

    def delete_run(self, run_id: str) -> None:
        self.deleted.append(run_id)


@pytest.fixture
def results(tmp_path: Path) -> Path:
    r = tmp_path / "results"
    for run_id in (OLD, EDGE, YOUNG, NEW):
        make_run(r, run_id, [], run={"source": "submit"})
    # Things that are not run directories, however old they look.
    (r / "README.md").write_text("operator notes\n")
    (r / "lost+found").mkdir()
    (r / "20200101T000000Z-zzzzzz").mkdir()  # not hex: not a run id
    (r / "20201301T000000Z-abcdef").mkdir()  # month 13: not a date
    (r / "19990101T000000Z-abcdef").write_text("a file named like a run")
    elsewhere = tmp_path / "elsewhere" / "20000101T000000Z-abcdef"
    elsewhere.mkdir(parents=True)
    (r / "20000101T000000Z-abcdef").symlink_to(elsewhere)
    return r


def test_run_time() -> None:
    assert run_time(OLD) == datetime(2025, 1, 1, tzinfo=UTC)
    assert run_time("20201301T000000Z-abcdef") is None
    assert run_time("latest") is None


def test_prunes_old_run_dirs_only(results: Path, tmp_path: Path) -> None:
    keys = FakeKeys()
    report = prune(results, 30, now=NOW, store=keys)
    assert report.pruned == [OLD, EDGE]
    assert keys.deleted == [OLD, EDGE]
    assert report.kept == 2
    assert report.redis == "deleted"
    left = sorted(p.name for p in results.iterdir())
    assert left == sorted(
        [
            YOUNG,
            NEW,
            "README.md",
            "lost+found",
            "20200101T000000Z-zzzzzz",
            "20201301T000000Z-abcdef",
            "19990101T000000Z-abcdef",
            "20000101T000000Z-abcdef",
        ]
    )
    assert (tmp_path / "elsewhere" / "20000101T000000Z-abcdef").is_dir()


def test_dry_run_and_files_only(results: Path) -> None:
    keys = FakeKeys()
    report = prune(results, 30, now=NOW, store=keys, dry_run=True)
    assert report.pruned == [OLD, EDGE]
    assert keys.deleted == []
    assert (results / OLD).is_dir()
    report = prune(results, 60, now=NOW)
    assert report.pruned == []
    assert report.redis == "skipped"


def test_a_failing_store_keeps_the_run_for_the_next_try(results: Path) -> None:
    from scanfleet.core.errors import ScanfleetError

    class Down:
        def delete_run(self, run_id: str) -> None:
            raise ScanfleetError("Redis: deleting a run: ConnectionError")

    report = prune(results, 30, now=NOW, store=Down())
    assert report.pruned == []
    assert set(report.errors) == {OLD, EDGE}
    assert (results / OLD).is_dir()


def test_prune_cli(results: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "SCANFLEET_RESULTS_DIR": str(results),
        "SCANFLEET_LOG_FORMAT": "console",
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(["prune", *args], env, timeout=60)

    dry = run("--dry-run", "--older-than-days", "1")
    assert dry.returncode == 0, dry.stderr
    assert f"would prune {OLD}" in dry.stdout
    assert (results / OLD).is_dir()
    r = run("--files-only", "--json")  # default age, 30 days before today: all four are older
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["pruned"] == [OLD, EDGE, YOUNG, NEW]
    assert (results / "README.md").is_file()
    assert run("--older-than-days", "0").returncode == 2
