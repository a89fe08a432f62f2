"""`scanfleet status --watch` follows a fleet run (real Redis, a real worker) to its end,
and Ctrl-C ends the watch without a traceback (issue 18)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.fixtures_fleet import CLI, FleetClusters, RedisServer, Worker, run_cli, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

SUBMIT = ["submit", "--context", "east", "-n", "apps", "--profile", "p", "--json"]


def test_status_watch_follows_a_fleet_run_and_exits_with_its_code(
    fleet_env: dict[str, str],
    fleet_clusters: FleetClusters,
    redis_server: RedisServer,
    make_worker: Callable[..., Worker],
) -> None:
    env = {**fleet_env, "SCANFLEET_STANDIN_SLEEP": "2"}
    make_worker(env, concurrency=2)
    sub = run_cli(SUBMIT, env)
    assert sub.returncode == 0, sub.stderr[-2000:]
    run_id = json.loads(sub.stdout)["run_id"]
    started = time.monotonic()
    w = run_cli(["status", run_id, "--watch", "--interval", "1s"], env, timeout=120)
    waited = time.monotonic() - started
    assert w.returncode == 0, w.stderr[-2000:]
    assert waited >= 1, "the scans sleep 2 s: the watch had to wait"
    run = json.loads((Path(env["SCANFLEET_RESULTS_DIR"]) / run_id / "run.json").read_text())
    assert run["targets"]["completed"] == run["targets"]["total"] > 0
    assert f"results: {run_id}  exit code: 0" in w.stdout
    assert "Traceback" not in w.stderr


def test_ctrl_c_ends_the_watch_quietly(
    fleet_env: dict[str, str],
    fleet_clusters: FleetClusters,
    redis_server: RedisServer,
) -> None:
    sub = run_cli(SUBMIT, fleet_env)  # no worker: the run stays queued
    assert sub.returncode == 0, sub.stderr[-2000:]
    run_id = json.loads(sub.stdout)["run_id"]
    proc = subprocess.Popen(
        [*CLI, "status", run_id, "--watch", "--interval", "1s"],
        env=fleet_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: proc.poll() is None and _watching(redis_server), 30, "the watch")
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130
    assert f"stopped watching run {run_id}" in err
    assert "Traceback" not in err
    redis_server.client().flushdb()  # the queued run is this test's only leftover


def _watching(redis_server: RedisServer) -> bool:
    """The watcher is in its loop: a client of this server has read run state (its last
    command is neither the reachability PING nor this CLIENT LIST)."""
    with redis_server.client() as client:
        return any(
            c.get("cmd") not in ("ping", "client|list", "client", "NULL")
            for c in client.client_list()
        )
