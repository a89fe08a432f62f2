"""The fleet end to end: real redis-server, real `scanfleet worker` processes (never eager
mode), two fake clusters, the stand-in auditor."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from scanfleet.store.files import RUN_ID_RE, iter_summaries
from tests.support.fixtures_fleet import (
    CLI,
    FLEET_CONTAINERS,
    KEY_PREFIX,
    FleetClusters,
    RedisServer,
    Worker,
    run_cli,
    wait_for,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(150),
]

DISCOVER = [
    "--all-contexts",
    "--all-namespaces",
    "--exclude-namespace",
    "kube-system",
    "--profile",
    "profile-x",
]
EXPECTED = sorted(f"{ctx}:{ref}" for ctx in ("east", "west") for ref in FLEET_CONTAINERS)


def summaries(env: dict[str, str], run_id: str) -> list[dict[str, Any]]:
    return list(iter_summaries(Path(env["SCANFLEET_RESULTS_DIR"]) / run_id))


def refs(items: list[dict[str, Any]]) -> list[str]:
    return sorted(
        f"{s['target']['context']}:{s['target']['namespace']}/{s['target']['pod']}/"
        f"{s['target']['container']}"
        for s in items
    )


def run_json(env: dict[str, str], run_id: str) -> dict[str, Any]:
    path = Path(env["SCANFLEET_RESULTS_DIR"]) / run_id / "run.json"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def assert_no_rbac_left(clusters: FleetClusters) -> None:
    for name, c in clusters.all.items():
        assert c.scanfleet_objects() == [], f"scanfleet RBAC left in {name}"


def start_submit(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, "submit", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def run_id_of(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().strip()


def test_submit_wait_scans_every_running_container_once_within_the_cluster_cap(
    fleet_env: dict[str, str],
    fleet_clusters: FleetClusters,
    redis_server: RedisServer,
    make_worker: Callable[..., Worker],
) -> None:
    env = {**fleet_env, "SCANFLEET_CLUSTER_CONCURRENCY": "2", "SCANFLEET_STANDIN_SLEEP": "1"}
    for w in [make_worker(env, concurrency=2, wait=False) for _ in range(2)]:
        wait_for(w.ready, 30, "worker to start")
    proc = run_cli(["submit", *DISCOVER, "--wait"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    run_id = lines[0]
    assert RUN_ID_RE.match(run_id), lines[:2]  # the run id alone on the first line
    assert "targets: 8" in proc.stdout
    found = summaries(env, run_id)
    # Exactly one summary per regular container of every Running pod: no init container,
    # no Pending pod, no kube-system.
    assert refs(found) == EXPECTED
    assert all(s["status"] == "completed" and s["cleanup"] == "complete" for s in found)
    run = run_json(env, run_id)
    assert run["targets"] == {"total": 8, "completed": 8, "error": 0, "passed": 8, "failed": 0}
    assert run["exit_code"] == 0
    assert set(run["by_cluster"]) == {"east", "west"}
    assert_no_rbac_left(fleet_clusters)
    peaks = [c.peak_scanfleet_serviceaccounts for c in fleet_clusters.all.values()]
    # Four worker processes could run four scans on one cluster; the cap allows two. (How
    # many did overlap is up to the scheduler: the test asserts the bound, not a peak.)
    assert 1 <= max(peaks) <= 2, peaks
    status = run_cli(["status", run_id, "--json"], env)
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["state"] == "finished"
    assert doc["done"] == 8
    assert doc["run"]["exit_code"] == 0
    # Leases are all released; the lease sets hold nobody.
    r = redis_server.client()
    for ctx in ("east", "west"):
        assert r.zcard(f"{KEY_PREFIX}:lease:{ctx}") == 0


def test_threshold_failure_gives_exit_code_1(
    fleet_env: dict[str, str], make_worker: Callable[..., Worker], tmp_path: Path
) -> None:
    threshold = tmp_path / "threshold.yml"
    threshold.write_text("failed:\n  total:\n    max: 0\n")
    make_worker(fleet_env, concurrency=2)
    proc = run_cli(
        [
            "submit",
            "--context",
            "west",
            "apps/web",
            "--profile",
            "p",
            "--threshold",
            str(threshold),
            "--wait",
            "--json",
        ],
        fleet_env,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    run = json.loads(proc.stdout)  # --json: one document, holding the run id
    assert run["run_id"]
    assert run["exit_code"] == 1
    assert run["targets"]["failed"] == 2
    assert run["targets"]["total"] == 2


def test_killed_worker_scans_are_redelivered_and_finish(
    fleet_env: dict[str, str],
    fleet_clusters: FleetClusters,
    make_worker: Callable[..., Worker],
    redis_server: RedisServer,
) -> None:
    env = {**fleet_env, "SCANFLEET_STANDIN_SLEEP": "3"}
    victim = make_worker(env, concurrency=2)
    proc = start_submit(env, *DISCOVER, "--wait")
    run_id = run_id_of(proc)
    r = redis_server.client()
    counts = f"{KEY_PREFIX}:run:{run_id}:counts"
    # Only the victim runs so far: once it has two scans in flight, it dies with them.
    wait_for(lambda: int(r.hget(counts, "running") or 0) >= 2, 30, "two running scans")
    victim.kill9()
    make_worker(env, concurrency=2)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    found = summaries(env, run_id)
    assert refs(found) == EXPECTED  # one result per target, never two
    assert all(s["status"] == "completed" for s in found)
    assert run_json(env, run_id)["targets"]["completed"] == 8
    assert_no_rbac_left(fleet_clusters)


def test_redis_restart_mid_run_loses_no_target(
    fleet_env: dict[str, str],
    fleet_clusters: FleetClusters,
    make_worker: Callable[..., Worker],
    make_redis: Callable[..., RedisServer],
) -> None:
    server = make_redis(appendonly=True)
    env = {**fleet_env, "SCANFLEET_BROKER_URL": server.url, "SCANFLEET_STANDIN_SLEEP": "1"}
    make_worker(env, concurrency=2)
    proc = start_submit(env, *DISCOVER, "--wait")
    run_id = run_id_of(proc)
    r = server.client()
    done = f"{KEY_PREFIX}:run:{run_id}:done"
    wait_for(lambda: r.scard(done) >= 2, 60, "two finished scans")
    server.restart()
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    found = summaries(env, run_id)
    assert refs(found) == EXPECTED
    assert run_json(env, run_id)["targets"]["completed"] == 8
    assert_no_rbac_left(fleet_clusters)


@pytest.fixture
def request_cleanup() -> Iterator[list[Callable[[], object]]]:
    todo: list[Callable[[], object]] = []
    yield todo
    for fn in todo:
        fn()


def test_bad_input_exits_2_and_queues_nothing(
    fleet_env: dict[str, str],
    redis_server: RedisServer,
    tmp_path: Path,
    request_cleanup: list[Callable[[], object]],
) -> None:
    bad_threshold = tmp_path / "bad.yml"
    bad_threshold.write_text("failed:\n  critical:\n    maximum: 0\n")
    bad_targets = tmp_path / "targets.yml"
    bad_targets.write_text("- {context: east, namespace: apps, pod: Web}\n")
    cases: list[tuple[list[str], str]] = [
        (["apps/Web_1"], "Web_1"),
        (["--context", "nowhere", "apps/web"], "nowhere"),
        (["--targets-file", str(bad_targets)], "Web"),
        (["--namespace", "apps", "--selector", "app in web"], "app in web"),
        (["--namespace", "Bad_NS"], "Bad_NS"),
        (["apps/web", "--threshold", str(bad_threshold)], "maximum"),
        (["apps/web", "--fleet-threshold", str(bad_threshold)], "failed"),
        (["apps/web", "--token-ttl", "700", "--timeout", "900"], "700"),
        (["apps/web", "--namespace", "apps"], "exclude each other"),
        ([], "nothing to scan"),
    ]
    # In-process (click's runner) for speed; the same exit path as the real command.
    from click.testing import CliRunner

    from scanfleet.cli import fleet as _fleet  # noqa: F401  (registers the commands)
    from scanfleet.cli.common import main_group

    runner = CliRunner()
    saved = structlog.get_config()  # the CLI configures logging onto the runner's stderr
    root_handlers = list(logging.getLogger().handlers)
    request_cleanup.append(lambda: structlog.configure(**saved))
    request_cleanup.append(lambda: setattr(logging.getLogger(), "handlers", root_handlers))
    for args, needle in cases:
        res = runner.invoke(
            main_group,
            ["submit", *args, "--profile", "p", "--wait"],
            env=fleet_env,
            catch_exceptions=False,
        )
        assert res.exit_code == 2, (args, res.output[-1000:])
        assert needle in res.stderr, (args, res.stderr[-1000:])
        assert res.stdout == "", args  # no run id: no run was created
    # And once through the real entry point, as a subprocess.
    proc = run_cli(["submit", "apps/Web_1", "--profile", "p", "--wait"], fleet_env)
    assert proc.returncode == 2
    assert "Web_1" in proc.stderr
    assert redis_server.client().dbsize() == 0  # nothing created, nothing queued
    unknown = run_cli(["status", "20250101T000000Z-abcdef"], fleet_env)
    assert unknown.returncode == 2
    assert "not found" in unknown.stderr


def test_submit_fans_out_in_bounded_chunks(
    fleet_env: dict[str, str], redis_server: RedisServer, tmp_path: Path
) -> None:
    targets = [
        {"context": "east", "namespace": "apps", "pod": f"pod-{i}", "container": "app"}
        for i in range(1201)
    ]
    tf = tmp_path / "targets.json"
    tf.write_text(json.dumps(targets))
    proc = run_cli(["submit", "--targets-file", str(tf), "--profile", "p", "--json"], fleet_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    status = json.loads(proc.stdout)  # --json: one document, holding the run id
    run_id = status["run_id"]
    assert status["total"] == 1201
    r = redis_server.client()
    assert r.llen("scanfleet") == 3  # 500 + 500 + 201: three small fan-out messages
    assert all(len(m) < 4000 for m in r.lrange("scanfleet", 0, -1))
    assert r.llen(f"{KEY_PREFIX}:run:{run_id}:targets") == 1201
    for key in r.keys(f"{KEY_PREFIX}:*"):
        assert r.ttl(key) > 0, key
    status = run_cli(["status", run_id], fleet_env)
    assert status.returncode == 0
    assert "queued: 1201" in status.stdout


def test_start_sweep_run_queues_a_discovery_run_for_sweeps(
    fleet_env: dict[str, str], redis_server: RedisServer
) -> None:
    code = (
        "from scanfleet.core.settings import Settings\n"
        "from scanfleet.sweeps.tick import start_sweep_run\n"
        "from scanfleet.sweeps.spec import Sweep\n"
        "from scanfleet.worker.app import create_app, fan_out_publisher\n"
        "sweep = Sweep(name='nightly', schedule='0 2 * * *', profile='p', all_contexts=True,"
        " namespaces=('apps',), selector='app=web', upload='https://heimdall.example')\n"
        "settings = Settings.from_env()\n"
        "print(start_sweep_run(sweep, settings, fan_out_publisher(create_app(settings))))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=fleet_env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_id = proc.stdout.strip().splitlines()[-1]
    r = redis_server.client()
    raw = r.get(f"{KEY_PREFIX}:run:{run_id}:plan")
    assert isinstance(raw, str)
    plan = json.loads(raw)
    assert plan["source"] == "sweep:nightly"
    assert plan["extra"] == {"upload": {"heimdall_url": "https://heimdall.example"}}
    assert r.hget(f"{KEY_PREFIX}:run:{run_id}:meta", "total") == "4"  # web/app+sidecar x 2
    assert r.llen("scanfleet") == 1
