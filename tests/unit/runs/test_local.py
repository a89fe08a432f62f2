"""`submit --local`: the fleet's pipeline in-process, no broker; same results as the fleet."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from scanfleet.kube.client import ClientCache
from scanfleet.runs.discovery import Scope, discover
from scanfleet.runs.local import run_local
from scanfleet.scan.plan import RunPlan
from scanfleet.store.files import iter_summaries
from tests.support.fixtures_auditor import this_host
from tests.support.fixtures_fleet import FLEET_CONTAINERS, FleetClusters, Worker, run_cli

DISCOVER = [
    "--all-contexts",
    "--all-namespaces",
    "--exclude-namespace",
    "kube-system",
    "--profile",
    "profile-x",
]
EXPECTED = sorted(f"{ctx}:{ref}" for ctx in ("east", "west") for ref in FLEET_CONTAINERS)
RUN = "20250101T000000Z-abcdef"


def by_ref(results_dir: Path, run_id: str) -> dict[str, dict[str, Any]]:
    out = {}
    for s in iter_summaries(results_dir / run_id):
        t = s["target"]
        out[f"{t['context']}:{t['namespace']}/{t['pod']}/{t['container']}"] = s
    return out


def test_local_needs_no_broker(
    fleet_env: dict[str, str], fleet_clusters: FleetClusters, closed_port: int
) -> None:
    env = {**fleet_env, "SCANFLEET_BROKER_URL": f"redis://127.0.0.1:{closed_port}/0"}
    proc = run_cli(["submit", *DISCOVER, "--local", "--concurrency", "4", "--json"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads(proc.stdout)  # --json: one document, holding the run id
    run_id = run["run_id"]
    assert run["targets"]["total"] == 8
    assert run["exit_code"] == 0
    assert sorted(by_ref(Path(env["SCANFLEET_RESULTS_DIR"]), run_id)) == EXPECTED
    for c in fleet_clusters.all.values():
        assert c.scanfleet_objects() == []


def test_local_cluster_cap_holds_with_more_threads(
    fleet_clusters: FleetClusters,
    standin_auditor: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("SCANFLEET_STANDIN_SLEEP", "0.5")
    clients = ClientCache(str(fleet_clusters.kubeconfig))
    entries = discover(
        clients, Scope(["east", "west"], all_namespaces=True, exclude_namespaces=["kube-system"])
    )
    plan = RunPlan(
        run_id=RUN,
        source="test",
        profile="p",
        created_at="2025-01-01T00:00:00Z",
        auditor=standin_auditor,
        token_ttl=900,
        timeout=60,
    )
    progress: list[tuple[int, int]] = []
    lock = threading.Lock()

    def on_progress(done: int, total: int) -> None:
        with lock:
            progress.append((done, total))

    run = run_local(
        clients,
        plan,
        [],
        tmp_path / "out",
        concurrency=6,
        entries=entries,
        cluster_concurrency=1,
        progress=on_progress,
        host=this_host(),
    )
    assert run["targets"]["completed"] == 8
    # Six threads, but never more than one scan at once per cluster.
    assert [c.peak_scanfleet_serviceaccounts for c in fleet_clusters.all.values()] == [1, 1]
    assert sorted(progress)[-1] == (8, 8)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_local_and_fleet_give_the_same_results(
    fleet_env: dict[str, str],
    fleet_clusters: FleetClusters,
    make_worker: Callable[..., Worker],
    samples_dir: Path,
    tmp_path: Path,
    standin_io: Path,
) -> None:
    plan = standin_io / "standin-plan.json"  # where the sandboxed stand-in may read
    plan.write_text(
        json.dumps(
            {
                "apps/web/sidecar": {"exit": 3, "stderr": "boom"},
                "apps/api": {
                    "report": str(samples_dir / "rhel8_sample_oneOfEachControlStatus.json")
                },
                "*": {},
            }
        )
    )
    threshold = tmp_path / "threshold.yml"
    threshold.write_text("compliance:\n  min: 50\n")
    env = {**fleet_env, "SCANFLEET_STANDIN_PLAN": str(plan)}
    make_worker(env, concurrency=2)
    args = [*DISCOVER, "--threshold", str(threshold)]
    fleet = run_cli(["submit", *args, "--wait"], env)
    local = run_cli(["submit", *args, "--local", "--concurrency", "3"], env)
    assert fleet.returncode == local.returncode != 0, (fleet.stderr[-2000:], local.stderr[-2000:])
    results = Path(env["SCANFLEET_RESULTS_DIR"])
    f = by_ref(results, fleet.stdout.splitlines()[0])
    loc = by_ref(results, local.stdout.splitlines()[0])
    assert sorted(f) == sorted(loc) == EXPECTED

    def essence(s: dict[str, Any]) -> tuple[Any, ...]:
        return (
            s["status"],
            (s["error"] or {}).get("kind"),
            s["counts"],
            s["compliance"],
            s["threshold"]["passed"],
            s["target"]["image_id"],
        )

    assert {k: essence(v) for k, v in f.items()} == {k: essence(v) for k, v in loc.items()}
    assert {essence(v)[0] for v in f.values()} == {"completed", "error"}  # a real mix
    f_run = json.loads((results / fleet.stdout.splitlines()[0] / "run.json").read_text())
    l_run = json.loads((results / local.stdout.splitlines()[0] / "run.json").read_text())
    for key in ("targets", "counts", "compliance", "exit_code", "by_cluster"):
        assert f_run[key] == l_run[key], key


def test_an_interrupted_run_records_every_unstarted_target_through_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interruption path gives results the one way every other error does: counted,
    covered targets answered by their covering entry's result, and the run finalized."""
    from datetime import UTC, datetime

    from scanfleet.core.errors import ScanInterrupted
    from scanfleet.core.targets import Target, scan_id_for
    from scanfleet.runs import local
    from scanfleet.runs.discovery import Entry
    from scanfleet.scan.auditor import Host

    plan = RunPlan.new(
        source="cli",
        profile="p",
        now=datetime(2025, 1, 1, tzinfo=UTC),
        auditor="cinc-auditor",
        token_ttl=600,
        timeout=60,
    )
    first = Entry(Target("east", "apps", "web", "app"), "img:1", "sha256:1")
    twin = Entry(Target("east", "apps", "web-2", "app"), "img:2", "sha256:2")
    second = Entry(Target("east", "apps", "api", "app"), "img:2", "sha256:2", covers=(twin,))

    def interrupted(pipe: Any, plan: RunPlan, target: Any) -> None:
        raise ScanInterrupted("SIGTERM")

    monkeypatch.setattr(local, "run_target", interrupted)
    run = run_local(
        ClientCache(str(tmp_path / "kubeconfig")),
        plan,
        [],
        tmp_path,
        entries=[first, second],
        host=Host(),
    )
    assert run["targets"]["total"] == 3
    assert run["targets"]["error"] == 3
    assert (tmp_path / plan.run_id / "run.json").is_file()
    got = {s["scan_id"]: s for s in iter_summaries(tmp_path / plan.run_id)}
    assert {s["error"]["kind"] for s in got.values()} == {"interrupted"}
    covered = got[scan_id_for(plan.run_id, twin.target)]
    assert covered["covered_by"] == scan_id_for(plan.run_id, second.target)
    assert covered["target"]["pod"] == "web-2"
