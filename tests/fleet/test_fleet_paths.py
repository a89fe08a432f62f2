"""Fleet paths end to end that test_fleet.py does not take: --dedupe-images, a fleet
threshold on a finished run, an explicit pod that does not exist, and where tokens must
never appear (Redis values, worker logs, result files). Real redis-server, real workers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from scanfleet.store.files import iter_summaries
from tests.support.fixtures_fleet import FleetClusters, RedisServer, Worker, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

DISCOVER = [
    "--all-contexts",
    "--all-namespaces",
    "--exclude-namespace",
    "kube-system",
    "--profile",
    "profile-x",
]


def finished(proc: Any, env: dict[str, str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    run = json.loads(proc.stdout)  # --json: one document, holding the run id
    run_id = run["run_id"]
    return run, list(iter_summaries(Path(env["SCANFLEET_RESULTS_DIR"]) / run_id))


def redis_text(client: redis.Redis) -> str:
    """Every key and value in the server, as one text (hashes, lists, sets, zsets too)."""
    parts: list[str] = []
    for key in client.scan_iter(count=500):
        kind = client.type(key)
        parts.append(str(key))
        if kind == "string":
            parts.append(str(client.get(key)))
        elif kind == "hash":
            parts.append(str(client.hgetall(key)))
        elif kind == "list":
            parts.append(str(client.lrange(key, 0, -1)))
        elif kind == "set":
            parts.append(str(client.smembers(key)))
        elif kind == "zset":
            parts.append(str(client.zrange(key, 0, -1)))
        elif kind == "stream":
            parts.append(str(client.xrange(key)))
    return "\n".join(parts)


def test_dedupe_images_scans_each_image_once_and_covers_the_rest(
    fleet_env: dict[str, str],
    make_worker: Callable[..., Worker],
    standin_io: Path,
) -> None:
    log = standin_io / "auditor.jsonl"  # where the sandboxed stand-in may write
    env = {**fleet_env, "SCANFLEET_STANDIN_LOG": str(log)}
    make_worker(env, concurrency=2)
    proc = run_cli(["submit", *DISCOVER, "--dedupe-images", "--wait", "--json"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run, found = finished(proc, env)
    assert run["targets"]["total"] == 8
    assert run["targets"]["completed"] == 8
    # Images: web14 and proxy20 run in both clusters (proxy20 twice in each), api differs
    # per cluster: four scans, four covered targets.
    scanned = {s["scan_id"]: s for s in found if s["covered_by"] is None}
    covered = [s for s in found if s["covered_by"] is not None]
    assert len(scanned) == 4, [s["target"] for s in scanned.values()]
    assert len(covered) == 4
    for s in covered:
        assert scanned[s["covered_by"]]["target"]["image_id"] == s["target"]["image_id"]
        assert s["counts"] == scanned[s["covered_by"]]["counts"]
    audited = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(audited) == 4


def test_a_fleet_threshold_judges_the_finished_run(
    fleet_env: dict[str, str],
    make_worker: Callable[..., Worker],
    tmp_path: Path,
) -> None:
    fleet = tmp_path / "fleet.yml"
    # Every scan reports one failed high control: eight in all, more than the fleet allows.
    fleet.write_text(
        "fleet:\n  failed.high.max: 1\n  passed.total.min: 0\ntargets:\n  error.max: 0\n"
    )
    make_worker(fleet_env, concurrency=2)
    proc = run_cli(
        ["submit", *DISCOVER, "--fleet-threshold", str(fleet), "--wait", "--json"], fleet_env
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    run, found = finished(proc, fleet_env)
    assert run["targets"]["error"] == 0
    assert run["targets"]["failed"] == 0  # no per-target threshold: nothing to miss
    assert run["counts"]["failed"]["high"] == 8
    assert run["fleet_threshold"]["passed"] is False
    [failure] = run["fleet_threshold"]["failures"]
    assert failure.startswith("fleet.failed.high.max: 8"), failure
    assert run["exit_code"] == 1
    assert len(found) == 8
    status = run_cli(["status", run["run_id"], "--json"], fleet_env)
    assert json.loads(status.stdout)["run"]["fleet_threshold"]["passed"] is False


def test_an_explicit_pod_that_does_not_exist_is_target_not_found(
    fleet_env: dict[str, str],
    fleet_clusters: FleetClusters,
    make_worker: Callable[..., Worker],
) -> None:
    make_worker(fleet_env, concurrency=2)
    proc = run_cli(
        [
            "submit",
            "--context",
            "west",
            "apps/no-such-pod",
            "apps/web/app",
            "--profile",
            "p",
            "--wait",
            "--json",
        ],
        fleet_env,
    )
    assert proc.returncode == 3, proc.stderr[-3000:]
    run, found = finished(proc, fleet_env)
    assert run["targets"]["total"] == 2
    assert run["targets"]["error"] == 1
    by_pod = {s["target"]["pod"]: s for s in found}
    assert by_pod["no-such-pod"]["status"] == "error"
    assert by_pod["no-such-pod"]["error"]["kind"] == "target_not_found"
    assert "no-such-pod" in by_pod["no-such-pod"]["error"]["message"]
    assert by_pod["web"]["status"] == "completed"
    # Nothing was minted for the missing pod: one identity, for web, and it is gone.
    assert len(fleet_clusters.west.issued_tokens) == 1
    assert fleet_clusters.west.scanfleet_objects() == []


def test_no_token_in_redis_worker_logs_or_results_after_a_fleet_run(
    fleet_env: dict[str, str],
    fleet_clusters: FleetClusters,
    redis_server: RedisServer,
    make_worker: Callable[..., Worker],
    auditor_plan: Callable[..., Path],
) -> None:
    # A chatty auditor echoes its token on stderr; scanfleet keeps stderr tails in errors.
    plan = auditor_plan({"*": {"leak_token": True, "exit": 3}})
    env = {**fleet_env, "SCANFLEET_STANDIN_PLAN": str(plan)}
    workers = [make_worker(env, concurrency=2) for _ in range(2)]
    proc = run_cli(["submit", *DISCOVER, "--wait", "--json"], env)
    assert proc.returncode == 3, proc.stderr[-3000:]
    run, found = finished(proc, env)
    assert run["targets"]["error"] == 8
    assert all(s["error"]["kind"] == "auditor_exit" for s in found)
    tokens = [t for c in fleet_clusters.all.values() for t in c.issued_tokens]
    assert len(tokens) == 8
    texts = {
        "redis": redis_text(redis_server.client()),
        "stdout": proc.stdout,
        "stderr": proc.stderr,
        **{f"worker {w.log.name}": w.log.read_text(errors="replace") for w in workers},
        **{
            str(p): p.read_text(errors="replace")
            for p in Path(env["SCANFLEET_RESULTS_DIR"]).rglob("*")
            if p.is_file()
        },
    }
    assert any("debug: using token" in t for t in texts.values())  # the leak was exercised
    for where, text in texts.items():
        for token in tokens:
            assert token not in text, f"a scan token in {where}"


def test_an_unexpected_failure_in_the_worker_is_recorded_and_the_run_ends(
    fleet_env: dict[str, str],
    fleet_clusters: FleetClusters,
    make_worker: Callable[..., Worker],
) -> None:
    # The API server answers the worker's read of west's apps/web with HTTP 200 and a Status
    # body: not a Pod. Nothing anticipates that; record_error must still give the two
    # targets of that pod a result, so the run finishes.
    fleet_clusters.west.fail("GET", r"^/api/v1/namespaces/apps/pods/web$", 200, times=1000)
    workers = [make_worker(fleet_env, concurrency=2)]
    proc = run_cli(["submit", *DISCOVER, "--wait", "--json"], fleet_env)
    fleet_clusters.west.clear_faults()
    assert proc.returncode == 3, proc.stderr[-3000:]
    run, found = finished(proc, fleet_env)
    assert run["targets"]["total"] == 8
    broken = [s for s in found if s["status"] == "error"]
    assert sorted(
        (s["target"]["context"], s["target"]["pod"], s["target"]["container"]) for s in broken
    ) == [("west", "web", "app"), ("west", "web", "sidecar")]
    for s in broken:
        assert s["error"]["message"].startswith("scan failed: "), s["error"]
    assert sum(s["status"] == "completed" for s in found) == 6
    assert "scan.failed_unexpectedly" in workers[0].log.read_text(errors="replace")
