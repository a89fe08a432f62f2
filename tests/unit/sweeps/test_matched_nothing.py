"""A scheduled sweep whose discovery matches no running pod (issue 18): it cannot exit 2
like `submit`, so its run is recorded as one that says so, and beat's posture shows it
(`scanfleet_sweep_matched_targets` 0, which `ScanfleetSweepMatchedNothing` alerts on)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scanfleet.core.settings import Settings
from scanfleet.sweeps.posture import PostureCollector
from scanfleet.sweeps.spec import Sweep
from scanfleet.sweeps.tick import start_sweep_run
from scanfleet.testing.fakekube import FakeCluster


def _matched(results: Path, sweeps: list[Sweep]) -> dict[str, float]:
    collector = PostureCollector(sweeps, results, None, "sf")
    return {
        s.labels["sweep"]: s.value
        for m in collector.collect()
        if m.name == "scanfleet_sweep_matched_targets"
        for s in m.samples
    }


def test_a_sweep_that_matches_nothing_records_a_run_that_says_so(
    fake_cluster: FakeCluster, admin_kubeconfig: Path, ops_redis: str, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    settings = Settings(
        broker_url=ops_redis,
        key_prefix="sf",
        results_dir=results,
        kubeconfig=str(admin_kubeconfig),
    )
    profile = str(tmp_path)
    empty = Sweep(name="renamed", schedule="0 3 * * *", profile=profile, namespaces=("other",))
    published: list[Any] = []
    run_id = start_sweep_run(empty, settings, lambda *a, **k: published.append(a))
    assert published == []  # nothing to scan, nothing queued
    run = json.loads((results / run_id / "run.json").read_text())
    assert run["source"] == "sweep:renamed"
    assert run["targets"]["total"] == 0
    assert run["note"] == "no running pods matched: the run had no targets"
    assert _matched(results, [empty]) == {"renamed": 0.0}
    assert fake_cluster.scanfleet_objects() == []


def test_a_sweep_run_with_targets_shows_how_many_it_matched(tmp_path: Path) -> None:
    results = tmp_path / "results"
    run_dir = results / "20260101T000000Z-abcdef"
    run_dir.mkdir(parents=True)
    run = {
        "run_id": run_dir.name,
        "source": "sweep:nightly",
        "finished_at": "2026-01-01T00:10:00Z",
        "targets": {"total": 12, "completed": 12, "error": 0, "passed": 12, "failed": 0},
        "by_cluster": {},
        "fleet_threshold": {"passed": None},
        "exit_code": 0,
    }
    (run_dir / "run.json").write_text(json.dumps(run))
    nightly = Sweep(name="nightly", schedule="0 3 * * *", profile="/p", namespaces=("a",))
    assert _matched(results, [nightly]) == {"nightly": 12.0}
