"""Fixtures for fleet tests: real redis-server and real `scanfleet worker` processes.

- `make_redis(appendonly=False)`: start a redis-server on a free port (stopped at teardown);
  `.restart()` stops and starts it on the same port and directory.
- `fleet_clusters`: two seeded fake clusters, contexts `east` and `west`, in one kubeconfig.
- `fleet_env`: environment for scanfleet subprocesses (broker, results dir, stand-in
  auditor sleeping `SCANFLEET_STANDIN_SLEEP`, short visibility timeout and leases).
- `make_worker(env, concurrency=2)`: start `scanfleet worker` in its own process group;
  `.kill9()` SIGKILLs the whole group (a node dying), `.stop()` shuts it down. Every worker
  started is stopped at teardown.
- `run_cli(args, env)`: run the scanfleet CLI in a subprocess.
Nothing here sleeps to wait: `wait_for(predicate, timeout)` polls with a deadline.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from scanfleet.testing.auditor import standin_environment
from scanfleet.testing.fakekube import FakeCluster, write_kubeconfig
from tests.support import leftovers
from tests.support.paths import SAMPLES
from tests.support.tools import require_tool

CLI = [sys.executable, "-c", "from scanfleet.cli import main; main()"]
KEY_PREFIX = "sftest"


def free_port() -> int:
    """A port that was free a moment ago: only for servers started by `start_redis`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound (never listening) for the whole test: connecting to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def start_redis(
    args: Sequence[str], port: int | None = None, attempts: int = 5
) -> tuple[int, subprocess.Popen[bytes]]:
    """Start redis-server (`args` without --port) and wait until *it* answers PING.

    Without `port`, take a fresh one; if another process grabbed it between our probe and
    redis' bind (redis exits, or someone else's server answers), retry on a new port.
    """
    for _ in range(attempts if port is None else 1):
        p = port or free_port()
        proc = subprocess.Popen(
            [*args, "--port", str(p)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 15
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with redis.Redis(host="127.0.0.1", port=p) as client:
                    if client.info("server")["process_id"] == proc.pid:
                        return p, proc
            except redis.ConnectionError:
                pass
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    pytest.fail(f"redis-server did not start ({args[0]}, {attempts} ports tried)")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll until predicate() is truthy; fail the test naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


class RedisServer:
    def __init__(self, directory: Path, appendonly: bool) -> None:
        self.exe = require_tool("redis-server")
        self.dir = directory
        self.appendonly = appendonly
        self.port: int | None = None  # chosen at the first start, kept across restarts
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        assert self.port is not None, "start the server first"
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)

    def start(self) -> RedisServer:
        args = [
            self.exe,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(self.dir),
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
        ]
        self.port, self.proc = start_redis(args, self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: redis flushes the AOF and exits
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def make_redis(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., RedisServer]]:
    servers: list[RedisServer] = []

    def factory(appendonly: bool = False) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(servers)}", appendonly).start()
        servers.append(server)
        return server

    yield factory
    try:
        left = [
            k
            for s in servers
            if s.proc is not None
            for k in leftovers.immortal_keys(s.client(), leftovers.PREFIXES)
        ]
        leftovers.fail_on(request, "Redis keys without a TTL", left)
    finally:
        for s in servers:
            s.stop()


@pytest.fixture
def redis_server(make_redis: Callable[..., RedisServer]) -> RedisServer:
    return make_redis()


def seed_fleet(cluster: FakeCluster, name: str) -> FakeCluster:
    """apps: web (app, sidecar, init container) and api (app), a Pending pod; ops: tool."""
    cluster.add_namespace("apps")
    cluster.add_namespace("ops")
    cluster.add_namespace("kube-system")
    cluster.add_pod(
        "apps",
        "web",
        containers=[
            ("app", "registry.example/web:1.4", "sha256:web14"),
            ("sidecar", "registry.example/proxy:2.0", "sha256:proxy20"),
        ],
        init_containers=["init-db"],
        labels={"app": "web"},
    )
    cluster.add_pod(
        "apps",
        "api",
        containers=[("app", "registry.example/api:3", f"sha256:api-{name}")],
        labels={"app": "api"},
    )
    cluster.add_pod("apps", "pending", containers=["app"], phase="Pending", labels={"app": "web"})
    cluster.add_pod(
        "ops", "tool", containers=[("tool", "registry.example/proxy:2.0", "sha256:proxy20")]
    )
    cluster.add_pod("kube-system", "dns", containers=["coredns"])
    return cluster


# Regular containers of Running pods outside kube-system, per cluster.
FLEET_CONTAINERS = ["apps/api/app", "apps/web/app", "apps/web/sidecar", "ops/tool/tool"]


@dataclass
class FleetClusters:
    east: FakeCluster
    west: FakeCluster
    kubeconfig: Path

    @property
    def all(self) -> dict[str, FakeCluster]:
        return {"east": self.east, "west": self.west}


@pytest.fixture
def fleet_clusters(make_cluster: Callable[..., FakeCluster], tmp_path: Path) -> FleetClusters:
    east = seed_fleet(make_cluster(name="east"), "east")
    west = seed_fleet(make_cluster(name="west"), "west")
    kcfg = write_kubeconfig(
        tmp_path / "kube" / "config", {"east": east, "west": west}, current="east"
    )
    return FleetClusters(east, west, kcfg)


@pytest.fixture
def fleet_env(
    tmp_path: Path,
    redis_server: RedisServer,
    fleet_clusters: FleetClusters,
    standin_launcher: Path,
    standin_io: Path,
) -> dict[str, str]:
    """Environment of scanfleet subprocesses in fleet tests.

    The auditor sandbox is on: the stand-in may read what it runs on and read/write
    `standin_io` (put stand-in plans there, never in tmp_path itself)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCANFLEET_", "KUBECONFIG"))}
    env.update(
        {
            "SCANFLEET_BROKER_URL": redis_server.url,
            "SCANFLEET_RESULTS_DIR": str(tmp_path / "results"),
            "SCANFLEET_KEY_PREFIX": KEY_PREFIX,
            "SCANFLEET_CLUSTER_CONCURRENCY": "10",
            "SCANFLEET_VISIBILITY_TIMEOUT": "8",
            "SCANFLEET_LEASE_SECONDS": "3",
            "SCANFLEET_TOKEN_TTL": "900",
            "SCANFLEET_SCAN_TIMEOUT": "60",
            "SCANFLEET_LOG_FORMAT": "json",
            "SCANFLEET_STANDIN_SLEEP": "0",
            "KUBECONFIG": str(fleet_clusters.kubeconfig),
            "PYTHONUNBUFFERED": "1",
        }
    )
    # SCANFLEET_AUDITOR, PATH (kubectl for the stand-in) and the sandbox allow-lists.
    env.update(standin_environment(standin_launcher, writable=standin_io, readable=[SAMPLES]))
    return env


class Worker:
    def __init__(self, env: Mapping[str, str], concurrency: int, log: Path) -> None:
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            [*CLI, "worker", "-c", str(concurrency), "--loglevel", "INFO"],
            env=dict(env),
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def ready(self) -> bool:
        return b'"worker.ready"' in self.log.read_bytes()

    def kill9(self) -> None:
        """SIGKILL the worker and its pool children at once, like a node dying."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        else:
            with contextlib.suppress(ProcessLookupError):  # children may outlive the parent
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._out.close()


@pytest.fixture
def make_worker(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    workers: list[Worker] = []

    def factory(env: Mapping[str, str], concurrency: int = 2, wait: bool = True) -> Worker:
        w = Worker(env, concurrency, tmp_path / f"worker-{len(workers)}.log")
        workers.append(w)
        if wait:
            wait_for(w.ready, 30, f"worker to start (log: {w.log})", every=0.2)
        return w

    yield factory
    for w in workers:
        w.stop()


def run_cli(
    args: list[str], env: Mapping[str, str], timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=dict(env), capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_cli
