"""A sweep tick, delivered to a real worker, starts an ordinary fleet run end to end.

The beat tests prove the schedule and the lock with a recording starter; this proves the
real starter: the tick discovers, queues and finishes a run with `source: "sweep:<name>"`,
a second tick while it runs is skipped, and the next run of the sweep gets drift.json
against the first.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from scanfleet.sweeps.spec import load_sweeps
from tests.support.fixtures_fleet import FleetClusters, RedisServer, Worker, wait_for
from tests.support.sweep_runs import runs_of, send_tick

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]


def test_a_tick_starts_a_real_fleet_run_and_the_next_one_reports_drift(
    fleet_env: dict[str, str],
    redis_server: RedisServer,
    fleet_clusters: FleetClusters,
    make_worker: Callable[..., Worker],
    tmp_path: Path,
) -> None:
    sweeps_file = tmp_path / "sweeps.yml"
    sweeps_file.write_text(
        "- name: nightly\n"
        "  schedule: '0 3 * * *'\n"
        "  all_contexts: true\n"
        "  namespaces: [apps]\n"
        "  selector: app=web\n"
        "  profile: profile-x\n"
    )
    [sweep] = load_sweeps(sweeps_file)
    env = {**fleet_env, "SCANFLEET_STANDIN_SLEEP": "1"}
    worker = make_worker(env, concurrency=2)
    results = Path(env["SCANFLEET_RESULTS_DIR"])

    send_tick(redis_server.url, sweep.to_dict())
    send_tick(redis_server.url, sweep.to_dict())  # overlaps the first: must be skipped
    first = wait_for(lambda: runs_of(results, "sweep:nightly"), 90, "the sweep run to finish")
    [run_a] = first
    assert run_a["targets"]["total"] == 4  # web/app + web/sidecar in east and west
    assert run_a["targets"]["completed"] == 4
    assert (results / run_a["run_id"] / "drift.json").exists()

    send_tick(redis_server.url, sweep.to_dict())
    both = wait_for(
        lambda: (r := runs_of(results, "sweep:nightly")) and len(r) == 2 and r,
        90,
        "the second sweep run to finish",
    )
    run_b = both[1]
    drift = json.loads((results / run_b["run_id"] / "drift.json").read_text())
    assert drift["run_a"] == run_a["run_id"]
    assert drift["run_b"] == run_b["run_id"]
    assert len(runs_of(results, "sweep:nightly")) == 2  # the overlapping tick started none
    assert b'"sweep.skipped"' in worker.log.read_bytes()
    for c in fleet_clusters.all.values():
        assert c.scanfleet_objects() == []
