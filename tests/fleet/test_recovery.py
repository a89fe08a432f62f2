"""The fleet's fault paths end to end, with real redis-server and real `scanfleet worker`
processes: a `kill -9`ed worker's scan recovered through its expired lease (long before the
visibility timeout), a cluster that stays unreachable through every re-queue, and two
deliveries of one scan colliding on its lease."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from scanfleet.core.targets import Target, scan_id_for
from scanfleet.identity.mint import object_name
from scanfleet.store.files import iter_summaries
from tests.support.fixtures_fleet import (
    KEY_PREFIX,
    FleetClusters,
    RedisServer,
    Worker,
    wait_for,
)
from tests.support.recovery import per_target, run_doc, submit

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

VISIBILITY = 300
"""Far above every deadline below: only the lease-based recovery can bring a scan back."""


def summaries(env: dict[str, str], run_id: str) -> list[dict[str, Any]]:
    return list(iter_summaries(Path(env["SCANFLEET_RESULTS_DIR"]) / run_id))


def sa_writes(cluster: Any, name: str) -> list[tuple[str, int | None]]:
    """Creates and deletes of ServiceAccount `name` (not its TokenRequests), in order."""

    def named(r: Any) -> bool:
        body_name = (
            ((r.body or {}).get("metadata") or {}).get("name") if r.method == "POST" else None
        )
        return name in (r.name, body_name)

    return [
        (r.method, r.code)
        for r in cluster.request_log
        if r.resource == "serviceaccounts"
        and not r.subresource
        and r.method in ("POST", "DELETE")
        and named(r)
    ]


def test_a_killed_workers_scan_is_recovered_within_a_few_leases_and_runs_once(
    fleet_env: dict[str, str],
    fleet_clusters: FleetClusters,
    redis_server: RedisServer,
    make_worker: Callable[..., Worker],
    standin_io: Path,
) -> None:
    plan, pid_file, log = (
        standin_io / "plan.json",
        standin_io / "web-app.pid",
        standin_io / "audits.jsonl",
    )
    plan.write_text(json.dumps({"apps/web/app": {"sleep": 120, "pid_file": str(pid_file)}}))
    env = {
        **fleet_env,
        "SCANFLEET_VISIBILITY_TIMEOUT": str(VISIBILITY),
        "SCANFLEET_LEASE_SECONDS": "3",
        "SCANFLEET_STANDIN_PLAN": str(plan),
        "SCANFLEET_STANDIN_LOG": str(log),
    }
    victim = make_worker(env, concurrency=2)
    run_id = submit(env, "--context", "east", "apps/web")  # app (long) and sidecar
    scan_id = scan_id_for(run_id, Target("east", "apps", "web", "app"))
    name = object_name(scan_id)
    sidecar = scan_id_for(run_id, Target("east", "apps", "web", "sidecar"))
    r = redis_server.client()
    wait_for(pid_file.is_file, 60, "the long scan's auditor to start")
    # The sidecar's result is recorded first: only the long scan dies with the worker.
    wait_for(
        lambda: r.sismember(f"{KEY_PREFIX}:run:{run_id}:done", sidecar),
        60,
        "the short scan's result",
    )
    assert name in [
        o["metadata"]["name"] for o in fleet_clusters.east.objects("serviceaccounts", "apps")
    ]
    victim.kill9()
    plan.write_text("{}")  # the re-run finishes at once
    # Two workers watch the same leases: the claim is atomic, so one of them re-runs it.
    rescuers = [make_worker(env, concurrency=1, wait=False) for _ in range(2)]
    for w in rescuers:
        wait_for(w.ready, 30, "a rescuing worker to start")
    # Lease 3 s: expiry within 3 s, noticed within 1.5 s, then one short scan. A minute is
    # generous on a loaded machine and still far below the 300 s visibility timeout.
    wait_for(lambda: run_doc(env, run_id), 60, "the run to finish without redelivery")
    assert sum(w.log.read_bytes().count(b'"scan.recovered"') for w in rescuers) == 1
    # The dead worker's own message ran it again: given back through the worker's expired
    # lease (store/holders.py), not re-published beside it (one copy of the scan).
    assert sum(w.log.read_bytes().count(b'"via": "message"') for w in rescuers) == 1
    assert sum(w.log.read_bytes().count(b'"worker.recovered"') for w in rescuers) == 1
    # The dead scan's identity was revoked by recovery (no janitor ran) before the re-run
    # minted its own: create, delete, create, delete, and no 409 from a leftover.
    assert sa_writes(fleet_clusters.east, name) == [
        ("POST", 201),
        ("DELETE", 200),
        ("POST", 201),
        ("DELETE", 200),
    ]
    assert fleet_clusters.east.scanfleet_objects() == []

    # Nothing of the dead worker waits for the visibility timeout: no message is left
    # unacknowledged or queued once the run has finished.
    wait_for(lambda: r.hlen("unacked") == 0, 30, "no unacknowledged message left")
    assert r.llen("scanfleet") == 0
    assert per_target(log) == {"apps/web/app": 1, "apps/web/sidecar": 1}
    run = run_doc(env, run_id)
    assert run is not None
    assert run["targets"]["total"] == 2
    assert run["targets"]["completed"] == 2
    assert r.hgetall(f"{KEY_PREFIX}:run:{run_id}:counts") == {
        "running": "0",
        "completed": "2",
        "error": "0",
    }
    assert len(summaries(env, run_id)) == 2


def test_a_cluster_unreachable_through_every_requeue_ends_as_api_error(
    fleet_env: dict[str, str],
    fleet_clusters: FleetClusters,
    make_worker: Callable[..., Worker],
    standin_io: Path,
    tmp_path: Path,
) -> None:
    log = standin_io / "audits.jsonl"
    env = {
        **fleet_env,
        "SCANFLEET_RETRY_DELAY_SCALE": "0.01",
        "SCANFLEET_KUBE_RETRIES": "0",
        "SCANFLEET_STANDIN_LOG": str(log),
    }
    targets = tmp_path / "targets.json"
    targets.write_text(
        json.dumps(
            [
                {"context": "east", "namespace": "apps", "pod": "web", "container": "app"},
                {"context": "west", "namespace": "apps", "pod": "web", "container": "app"},
            ]
        )
    )
    run_id = submit(env, "--targets-file", str(targets))  # both resolved while reachable
    fleet_clusters.west.stop()  # then west goes away for good
    worker = make_worker(env, concurrency=2)
    run = wait_for(lambda: run_doc(env, run_id), 90, "the run to finish")
    by_cluster = {s["target"]["context"]: s for s in summaries(env, run_id)}
    assert by_cluster["east"]["status"] == "completed"
    assert by_cluster["west"]["status"] == "error"
    assert by_cluster["west"]["error"]["kind"] == "api_error"
    assert "cannot reach the API server" in by_cluster["west"]["error"]["message"]
    assert {k: run["targets"][k] for k in ("total", "completed", "error")} == {
        "total": 2,
        "completed": 1,
        "error": 1,
    }
    assert run["exit_code"] == 3  # a scan error
    events = [
        json.loads(line) for line in worker.log.read_text().splitlines() if line.startswith("{")
    ]
    deferred = [
        e
        for e in events
        if e.get("event") == "scan.deferred" and e.get("reason") == "ClusterUnavailable"
    ]
    assert len(deferred) == 4  # every re-queue of clock.RETRY_DELAYS, then the result
    assert per_target(log) == {"apps/web/app": 1}  # east's audit; west's never started


def test_two_deliveries_of_one_scan_collide_on_its_lease_and_record_once(
    fleet_env: dict[str, str],
    redis_server: RedisServer,
    make_worker: Callable[..., Worker],
    standin_io: Path,
) -> None:
    plan, pid_file, log, release = (
        standin_io / "plan.json",
        standin_io / "web.pid",
        standin_io / "audits.jsonl",
        standin_io / "go",
    )
    plan.write_text(
        json.dumps({"apps/web/app": {"wait_for": str(release), "pid_file": str(pid_file)}})
    )
    env = {
        **fleet_env,
        "SCANFLEET_VISIBILITY_TIMEOUT": str(VISIBILITY),
        "SCANFLEET_STANDIN_PLAN": str(plan),
        "SCANFLEET_STANDIN_LOG": str(log),
    }
    worker = make_worker(env, concurrency=2)
    run_id = submit(env, "--context", "east", "apps/web/app")
    wait_for(pid_file.is_file, 60, "the first delivery's auditor to start")
    # A second delivery of the same scan task while the first holds its lease.
    code = (
        "import sys\nfrom scanfleet.core.settings import Settings\n"
        "from scanfleet.worker.app import QUEUE, SCAN_TASK, create_app\n"
        "create_app(Settings.from_env()).send_task(SCAN_TASK, args=[sys.argv[1], "
        "{'context': 'east', 'namespace': 'apps', 'pod': 'web', 'container': 'app'}],"
        " queue=QUEUE)\n"
    )
    sent = subprocess.run(
        [sys.executable, "-c", code, run_id],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr[-2000:]

    def deferred() -> bool:
        return any(
            e.get("event") == "scan.deferred" and e.get("reason") == "SlotBusy"
            for e in map(
                json.loads, (ln for ln in worker.log.read_text().splitlines() if ln.startswith("{"))
            )
        )

    wait_for(deferred, 60, "the second delivery to back off (SlotBusy)")
    release.write_text("go")
    wait_for(lambda: run_doc(env, run_id), 60, "the run to finish")
    wait_for(
        lambda: b'"scan.already_done"' in worker.log.read_bytes(),
        60,
        "the retried delivery to find the result",
    )
    assert per_target(log) == {"apps/web/app": 1}
    r = redis_server.client()
    assert r.hgetall(f"{KEY_PREFIX}:run:{run_id}:counts") == {
        "running": "0",
        "completed": "1",
        "error": "0",
    }
    assert len(summaries(env, run_id)) == 1
