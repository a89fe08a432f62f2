"""Results in an object store, end to end: moto's S3 server on loopback, a real redis-server,
real `scanfleet worker` processes that share no filesystem for results (each its own working
directory and temp directory), the stand-in auditor.

- Two sweep runs land in the bucket (summaries, reports, run.json, drift.json), and every
  reader works against it: `status`, `report` in every format, `diff`, `prune` (an old run
  deleted, the new ones kept) and beat's posture collector.
- A bucket that refuses writes, and an endpoint slower than the request timeout: the scans
  end as `results_unwritable` errors and the run still finalizes (exit 3, kept in Redis).
- The AWS keys never reach a worker log, a CLI output or Redis (results, task messages).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from prometheus_client import CollectorRegistry

from scanfleet.core.settings import Settings
from scanfleet.reports import FORMATS
from scanfleet.store.results import ResultsStore, open_results, read_json
from scanfleet.sweeps.posture import PostureCollector
from scanfleet.sweeps.spec import load_sweeps
from tests.support.fixtures_fleet import (
    CLI,
    FleetClusters,
    RedisServer,
    Worker,
    run_cli,
    wait_for,
)
from tests.support.fixtures_s3 import ACCESS_KEY, SECRET_KEY, S3Server, SlowProxy
from tests.support.sweep_runs import send_tick

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

OLD_RUN = "20200101T000000Z-0a0b0c"


class IsolatedWorker(Worker):
    """A worker in its own working directory, with its own TMPDIR and HOME: nothing on a
    local filesystem is shared with another worker or with the test."""

    def __init__(self, env: Mapping[str, str], concurrency: int, home: Path) -> None:
        (home / "tmp").mkdir(parents=True)
        self.home = home
        self.log = home / "worker.log"
        self._out = self.log.open("wb")
        self.proc = subprocess.Popen(
            [*CLI, "worker", "-c", str(concurrency), "--loglevel", "INFO"],
            env={**env, "TMPDIR": str(home / "tmp"), "HOME": str(home)},
            cwd=home,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.fixture
def isolated_workers(tmp_path: Path) -> Iterator[Callable[..., list[IsolatedWorker]]]:
    started: list[IsolatedWorker] = []

    def start(env: Mapping[str, str], n: int = 2) -> list[IsolatedWorker]:
        ws = [IsolatedWorker(env, 2, tmp_path / f"node-{len(started) + i}") for i in range(n)]
        started.extend(ws)
        for w in ws:
            wait_for(w.ready, 30, f"worker to start (log: {w.log})", every=0.2)
        return ws

    yield start
    for w in started:
        w.stop()


def s3_env(fleet_env: Mapping[str, str], server: S3Server, location: str) -> dict[str, str]:
    env = {k: v for k, v in fleet_env.items() if not k.startswith("AWS_")}
    env.update(server.env())
    env["SCANFLEET_RESULTS_DIR"] = location
    return env


def store_for(env: Mapping[str, str]) -> ResultsStore:
    settings = Settings(
        results_url=env["SCANFLEET_RESULTS_DIR"], s3_endpoint=env["SCANFLEET_S3_ENDPOINT"]
    )
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"):
        os.environ[k] = env[k]
    return open_results(None, settings)


def sweep_runs(store: ResultsStore, source: str) -> list[dict[str, Any]]:
    found = []
    for run_id in store.run_ids():
        if store.exists(run_id, "run.json"):
            run = read_json(store, run_id, "run.json")
            if run.get("source") == source:
                found.append(run)
    return found


def assert_no_secret(*texts: str | bytes) -> None:
    for t in texts:
        b = t.encode() if isinstance(t, str) else t
        assert SECRET_KEY.encode() not in b
        assert ACCESS_KEY.encode() not in b


def redis_dump(redis_server: RedisServer) -> bytes:
    r = redis_server.client()
    out = []
    for key in r.scan_iter("*"):
        kind = str(r.type(key))
        value: Any = {
            "string": r.get,
            "hash": r.hgetall,
            "list": lambda k: r.lrange(k, 0, -1),
            "set": lambda k: sorted(r.smembers(k)),
            "zset": lambda k: r.zrange(k, 0, -1),
        }.get(kind, lambda k: "")(key)
        out.append(f"{key}={value}")
    return "\n".join(out).encode()


@pytest.fixture
def nightly(tmp_path: Path) -> dict[str, Any]:
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
    return {"sweep": sweep, "file": sweeps_file}


def test_a_fleet_run_with_results_in_s3_and_every_reader(
    fleet_env: dict[str, str],
    redis_server: RedisServer,
    fleet_clusters: FleetClusters,
    s3_server: S3Server,
    isolated_workers: Callable[..., list[IsolatedWorker]],
    nightly: dict[str, Any],
    tmp_path: Path,
) -> None:
    bucket = s3_server.bucket()
    env = s3_env(fleet_env, s3_server, f"s3://{bucket}/fleet/results")
    workers = isolated_workers(env, 2)
    store = store_for(env)
    sweep = nightly["sweep"]

    send_tick(redis_server.url, sweep.to_dict())
    [run_a] = wait_for(lambda: sweep_runs(store, "sweep:nightly"), 120, "the first sweep run")
    send_tick(redis_server.url, sweep.to_dict())
    run_b = wait_for(
        lambda: (r := sweep_runs(store, "sweep:nightly")) and len(r) == 2 and r[1],
        120,
        "the second sweep run",
    )
    assert run_a["targets"]["total"] == 4
    assert run_a["targets"]["completed"] == 4
    assert run_b["exit_code"] == 0

    # The layout of a directory, in the bucket: summaries, reports, run.json, drift.json.
    keys = s3_server.keys(bucket, f"fleet/results/{run_b['run_id']}/")
    names = sorted(k.rsplit("/", 1)[1] for k in keys)
    assert len([n for n in names if n.endswith(".report.json")]) == 4
    assert len(names) == 4 * 2 + 2
    assert "run.json" in names
    assert "drift.json" in names
    drift = read_json(store, run_b["run_id"], "drift.json")
    assert drift["run_a"] == run_a["run_id"]
    # No worker wrote results to its own disk: the staging directories are empty again.
    for w in workers:
        staging = list((w.home / "tmp").glob("scanfleet.results.staging.*/*"))
        assert staging == [], staging
        assert not (w.home / "scanfleet-results").exists()
    assert not Path(fleet_env["SCANFLEET_RESULTS_DIR"]).exists()

    # status: from Redis while it knows the run, from run.json in the bucket once it does not.
    status = run_cli(["status", run_b["run_id"], "--json"], env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["run"]["exit_code"] == 0
    no_redis = {**env, "SCANFLEET_KEY_PREFIX": "sftest-unknown"}
    status = run_cli(["status", run_b["run_id"], "--json"], no_redis)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["state"] == "finished"

    for fmt in FORMATS:
        out = run_cli(["report", run_b["run_id"], "--format", fmt], env)
        assert out.returncode == 0, (fmt, out.stderr[-2000:])
        assert run_b["run_id"] in out.stdout or fmt == "junit", fmt
    report = json.loads(run_cli(["report", run_b["run_id"]], env).stdout)
    assert len(report["targets_detail"]) == 4  # drift.json is no target

    diff = run_cli(["diff", run_a["run_id"], run_b["run_id"], "--json"], env)
    assert diff.returncode == 0, diff.stderr
    assert json.loads(diff.stdout)["totals"]["targets_changed"] == 0

    # Beat's posture, read from the bucket at scrape time.
    reg = CollectorRegistry()
    reg.register(
        PostureCollector([sweep], store, fakeredis.FakeRedis(decode_responses=True), "pfx")
    )
    assert reg.get_sample_value(
        "scanfleet_sweep_targets", {"sweep": "nightly", "outcome": "passed"}
    ) == float(run_b["targets"]["passed"])
    assert (
        reg.get_sample_value(
            "scanfleet_sweep_drift_controls", {"sweep": "nightly", "change": "fixed"}
        )
        == 0.0
    )

    # prune: an old run goes (every object, one batched delete), the new ones stay.
    for i in range(3):
        store.write_json(OLD_RUN, f"s{i}.json", {"scan_id": f"s{i}"})
    pruned = run_cli(["prune", "--files-only", "--older-than-days", "30", "--json"], env)
    assert pruned.returncode == 0, pruned.stderr
    assert json.loads(pruned.stdout)["pruned"] == [OLD_RUN]
    assert s3_server.keys(bucket, f"fleet/results/{OLD_RUN}/") == []
    assert store.run_ids() == sorted([run_a["run_id"], run_b["run_id"]])

    assert_no_secret(
        *(w.log.read_bytes() for w in workers),
        status.stdout,
        status.stderr,
        redis_dump(redis_server),
        *(store.read_bytes(run_b["run_id"], n) for n in names),
    )
    for c in fleet_clusters.all.values():
        assert c.scanfleet_objects() == []


@pytest.mark.parametrize("how", ["refused", "slow"])
def test_unwritable_results_end_each_scan_with_an_error_kind_and_the_run_finalizes(
    how: str,
    fleet_env: dict[str, str],
    redis_server: RedisServer,
    fleet_clusters: FleetClusters,
    s3_server: S3Server,
    isolated_workers: Callable[..., list[IsolatedWorker]],
) -> None:
    bucket = s3_server.bucket(deny_put=how == "refused")
    env = s3_env(fleet_env, s3_server, f"s3://{bucket}/r")
    proxy = None
    if how == "slow":
        host, _, port = s3_server.endpoint.removeprefix("http://").partition(":")
        proxy = SlowProxy((host, int(port)), delay=5.0)
        env["SCANFLEET_S3_ENDPOINT"] = proxy.endpoint
        env["SCANFLEET_S3_TIMEOUT"] = "0.5"
    try:
        workers = isolated_workers(env, 1)
        proc = run_cli(
            ["submit", "--context", "east", "--profile", "profile-x", "apps/web", "--wait"],
            env,
            timeout=150,
        )
    finally:
        if proxy is not None:
            proxy.close()
    assert proc.returncode == 3, (proc.stdout[-2000:], proc.stderr[-2000:])
    run_id = proc.stdout.splitlines()[0]
    status = run_cli(["status", run_id, "--json"], env)
    doc = json.loads(status.stdout)
    assert doc["state"] == "finished"
    assert doc["error"] == doc["total"] == 2
    assert doc["run"]["error"]["kind"] == "results_unwritable"
    assert doc["run"]["exit_code"] == 3
    assert doc["run"]["targets"]["error"] == 2  # refused results count as errors
    log = workers[0].log.read_bytes()
    assert b'"results_unwritable"' in log
    if how == "refused":
        assert s3_server.keys(bucket) == []
    # (A slow endpoint may still store what the client gave up on: the run says error.)
    assert_no_secret(log, proc.stdout, proc.stderr, status.stdout, redis_dump(redis_server))
    for c in fleet_clusters.all.values():
        assert c.scanfleet_objects() == []


def test_the_cli_on_local_results_does_not_import_the_s3_client(tmp_path: Path) -> None:
    """And the S3 client does load for an s3:// location (the check can fail), where an
    unreachable endpoint is a one-line error."""
    probe = (
        "import sys; from scanfleet.cli import main; sys.argv=['scanfleet', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    print('EXIT', e.code)\n"
        "print('OBSTORE', 'obstore' in sys.modules)"
    )
    env = {
        **os.environ,
        "SCANFLEET_BROKER_URL": "redis://127.0.0.1:1/0",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_EC2_METADATA_DISABLED": "true",
        "SCANFLEET_S3_TIMEOUT": "1",
    }
    for location, loaded in ((str(tmp_path), "False"), ("s3://bkt/p", "True")):
        out = subprocess.run(
            [sys.executable, "-c", probe, "report", "20250101T000000Z-abcdef"],
            env={
                **env,
                "SCANFLEET_RESULTS_DIR": location,
                "SCANFLEET_S3_ENDPOINT": "http://127.0.0.1:1",
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert f"OBSTORE {loaded}" in out.stdout, (location, out.stdout, out.stderr)
    # The unreachable endpoint: one line naming the object, exit 3, no traceback.
    assert "EXIT 3" in out.stdout
    assert out.stderr.startswith("scanfleet: error: cannot list 20250101T000000Z-abcdef/")
    assert "Traceback" not in out.stderr
    assert_no_secret(out.stdout, out.stderr)


def test_submit_local_writes_its_results_to_s3(
    fleet_env: dict[str, str],
    fleet_clusters: FleetClusters,
    s3_server: S3Server,
    closed_port: int,
) -> None:
    bucket = s3_server.bucket()
    env = s3_env(fleet_env, s3_server, f"s3://{bucket}/local")
    env["SCANFLEET_BROKER_URL"] = f"redis://127.0.0.1:{closed_port}/0"
    proc = run_cli(
        ["submit", "--all-contexts", "--namespace", "apps", "--profile", "p", "--local", "--json"],
        env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = json.loads(proc.stdout)["run_id"]  # --json: one document on stdout
    names = [k.rsplit("/", 1)[1] for k in s3_server.keys(bucket, f"local/{run_id}/")]
    assert len([n for n in names if n.endswith(".report.json")]) == 6  # apps: 3 per cluster
    assert len(names) == 6 * 2 + 1
    assert "run.json" in names
    assert not Path(fleet_env["SCANFLEET_RESULTS_DIR"]).exists()
    assert_no_secret(proc.stdout, proc.stderr)
