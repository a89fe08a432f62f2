"""Fleet benchmark: scheduling efficiency, API cost per scan, submit cost, broker ceiling.

    python bench/bench_fleet.py [--n 48] [--w 8] [--sleep 1] [--submit-targets 10000]

Uses the fake API server (scanfleet/testing/fakekube), the stand-in auditor sleeping S seconds and a
redis-server of its own on a free port (flushed freely). Prints:

1. efficiency = ideal / measured, ideal = ceil(N/W) x S, for `--local` (W threads) and the
   fleet (one `scanfleet worker -c W`, prefork). Both warm (one warm-up run first).
2. Kubernetes API requests per scan, from the fake's request log: scanfleet's own (the
   stand-in auditor's kubectl requests, told apart by their User-Agent, are not counted;
   tests/deploy/test_admission_policy.py asserts the same figure for one scan: 6).
3. Time and peak RSS of `scanfleet submit` queueing 10,000 explicit targets (no workers).
4. Throughput of a bare Celery no-op task (same broker and delivery settings) on W procs.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._harness import wait_until  # noqa: E402
from scanfleet.core import logs  # noqa: E402
from scanfleet.core.settings import Settings  # noqa: E402
from scanfleet.kube.client import ClientCache  # noqa: E402
from scanfleet.runs.discovery import Scope, discover  # noqa: E402
from scanfleet.runs.local import run_local  # noqa: E402
from scanfleet.scan.auditor import Host  # noqa: E402
from scanfleet.scan.plan import RunPlan  # noqa: E402
from scanfleet.store.state import RunStore  # noqa: E402
from scanfleet.testing.fakekube import FakeCluster  # noqa: E402
from tests.support.fixtures_auditor import standin_read_paths  # noqa: E402
from tests.support.fixtures_fleet import CLI, RedisServer  # noqa: E402
from tests.support.paths import STANDIN  # noqa: E402
from tests.support.tools import path_with_venv_bin  # noqa: E402

RUN_LOCAL = "20250101T000000Z-{:06x}"


def fast_standin(directory: Path) -> Path:
    """A launcher for the stand-in that skips the version-manager shim and `site`.

    The stand-in only needs the standard library; started through `/usr/bin/env python3`
    on a pyenv machine it spends ~185 ms of CPU before it sleeps, which on 2 cores is
    benchmark noise, not scanfleet's overhead (a real auditor's own start-up is seconds).
    """
    launcher = directory / "cinc-auditor"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "{STANDIN}" "$@"\n')
    launcher.chmod(0o755)
    return launcher


def seed(cluster: FakeCluster, n: int) -> None:
    cluster.add_namespace("bench")
    for i in range(n):
        cluster.add_pod("bench", f"pod-{i:03d}", containers=[("app", "img:1", f"sha256:{i}")])


def bench_local(
    kcfg: Path, cluster: FakeCluster, out: Path, n: int, w: int, s: float, auditor: Path
) -> dict:
    os.environ["SCANFLEET_STANDIN_SLEEP"] = str(s)
    clients = ClientCache(str(kcfg))
    entries = discover(clients, Scope(["bench"], namespaces=["bench"]))
    assert len(entries) == n

    def run(i: int, subset: list) -> float:  # type: ignore[type-arg]
        plan = RunPlan(
            run_id=RUN_LOCAL.format(i),
            source="bench",
            profile="p",
            created_at="2025-01-01T00:00:00Z",
            auditor=str(auditor),
            token_ttl=900,
            timeout=120,
        )
        t0 = time.monotonic()
        run_local(
            clients,
            plan,
            [],
            out,
            concurrency=w,
            entries=subset,
            cluster_concurrency=w,
            host=Host.from_settings(Settings.from_env()),
        )
        return time.monotonic() - t0

    run(1, entries[:w])  # warm-up: clients, imports
    single = run(3, entries[:1])  # one scan alone: the per-scan floor (S + fixed cost)
    cluster.clear_request_log()
    wall = run(2, entries)
    requests = sum(1 for r in cluster.request_log if not r.user_agent.startswith("kubectl"))
    return {"wall_s": wall, "api_requests_per_scan": requests / n, "single_scan_s": single}


def bench_fleet(env: dict[str, str], store: RunStore, n: int, w: int, s: float, tmp: Path) -> dict:
    env = {**env, "SCANFLEET_STANDIN_SLEEP": str(s)}
    log = (tmp / "worker.log").open("wb")
    worker = subprocess.Popen(
        [*CLI, "worker", "-c", str(w)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(lambda: b'"worker.ready"' in (tmp / "worker.log").read_bytes(), 60)

        def run(count: int) -> float:
            targets = [
                {
                    "context": "bench",
                    "namespace": "bench",
                    "pod": f"pod-{i:03d}",
                    "container": "app",
                }
                for i in range(count)
            ]
            tf = tmp / f"targets-{count}.json"
            tf.write_text(json.dumps(targets))
            p = subprocess.Popen(
                [*CLI, "submit", "--targets-file", str(tf), "--profile", "p"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            assert p.stdout is not None
            run_id = p.stdout.readline().strip()
            t0 = time.monotonic()  # the run exists; from here on it is fan-out and scans
            wait_until(lambda: store.is_finalized(run_id), 300)
            t1 = time.monotonic()
            p.wait(30)
            return t1 - t0

        run(w)  # warm-up: every pool process has its clients and imports
        return {"wall_s": run(n)}
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
        log.close()


def bench_submit(env: dict[str, str], redis_url: str, count: int, tmp: Path) -> dict:
    targets = [
        {"context": "bench", "namespace": f"ns-{i % 50}", "pod": f"pod-{i}", "container": "app"}
        for i in range(count)
    ]
    tf = tmp / "targets-10k.json"
    tf.write_text(json.dumps(targets))
    code = (
        "import resource, sys, time\n"
        "t0 = time.monotonic()\n"
        "from scanfleet.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "sys.stderr.write('BENCH %f %d\\n' % (time.monotonic() - t0, "
        "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n"
    )
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-c", code, "submit", "--targets-file", str(tf), "--profile", "p"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.monotonic() - t0
    line = next(x for x in p.stderr.splitlines() if x.startswith("BENCH "))
    _, inner, rss_kb = line.split()
    import redis

    r = redis.Redis.from_url(redis_url)
    msgs = r.lrange("scanfleet", 0, -1)
    return {
        "wall_s": wall,
        "in_process_s": float(inner),
        "peak_rss_mb": int(rss_kb) / 1024,
        "messages": len(msgs),
        "largest_message_bytes": max(len(m) for m in msgs),
    }


NOOP_APP = """
import os, redis
from celery import Celery
app = Celery("noop", broker=os.environ["BROKER"])
app.conf.update(task_serializer="json", accept_content=["json"], task_acks_late=True,
                task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
                task_ignore_result=True, worker_hijack_root_logger=False,
                broker_connection_retry_on_startup=True)
r = None
@app.task(name="noop")
def noop():
    global r
    r = r or redis.Redis.from_url(os.environ["BROKER"])
    r.incr("noop:done")
"""


def bench_noop(redis_url: str, w: int, count: int, tmp: Path) -> dict:
    (tmp / "noop_app.py").write_text(NOOP_APP)
    env = {**os.environ, "BROKER": redis_url, "PYTHONPATH": str(tmp)}
    log = (tmp / "noop.log").open("wb")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "noop_app",
            "worker",
            "-c",
            str(w),
            "--pool=prefork",
            "--without-gossip",
            "--without-mingle",
            "-l",
            "INFO",
        ],
        env=env,
        cwd=tmp,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(lambda: b"ready." in (tmp / "noop.log").read_bytes(), 60)
        sys.path.insert(0, str(tmp))
        os.environ["BROKER"] = redis_url
        import noop_app  # type: ignore[import-not-found]
        import redis

        r = redis.Redis.from_url(redis_url)
        r.delete("noop:done")
        t0 = time.monotonic()
        with noop_app.app.producer_or_acquire() as producer:
            for _ in range(count):
                noop_app.noop.apply_async(producer=producer)
        t_pub = time.monotonic() - t0
        wait_until(lambda: int(r.get("noop:done") or 0) >= count, 300)
        wall = time.monotonic() - t0
        return {"tasks": count, "wall_s": wall, "publish_s": t_pub, "per_s": count / wall}
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--w", type=int, default=8)
    ap.add_argument("--sleep", type=float, default=1.0)
    ap.add_argument("--submit-targets", type=int, default=10000)
    ap.add_argument("--noop-tasks", type=int, default=2000)
    args = ap.parse_args()
    logs.configure("console", level=logging.WARNING)
    n, w, s = args.n, args.w, args.sleep
    tmp = Path(tempfile.mkdtemp(prefix="scanfleet-bench-"))
    cluster = FakeCluster(name="bench").start()
    server = RedisServer(tmp / "redis", appendonly=False).start()
    try:
        seed(cluster, n)
        kcfg = cluster.write_kubeconfig(tmp / "kubeconfig", context="bench")
        (tmp / "auditor").mkdir()
        auditor = fast_standin(tmp / "auditor")
        # The sandbox is on, as in production: the stand-in (a Python script that execs with
        # kubectl) may read what it runs on, and its launcher's own directory; never `tmp`,
        # which holds the admin kubeconfig and the results.
        sandbox_read = os.pathsep.join([*standin_read_paths(), str(auditor.parent)])
        os.environ["SCANFLEET_SANDBOX_ALLOW_READ"] = sandbox_read  # bench_local: in-process
        os.environ["PATH"] = path_with_venv_bin(os.environ.get("PATH"))  # kubectl
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCANFLEET_")}
        env.update(
            {
                "SCANFLEET_SANDBOX_ALLOW_READ": sandbox_read,
                "SCANFLEET_BROKER_URL": server.url,
                "SCANFLEET_RESULTS_DIR": str(tmp / "results"),
                "SCANFLEET_AUDITOR": str(auditor),
                "SCANFLEET_CLUSTER_CONCURRENCY": str(max(w, 10)),
                "SCANFLEET_TOKEN_TTL": "900",
                "SCANFLEET_SCAN_TIMEOUT": "120",
                "KUBECONFIG": str(kcfg),
                "SCANFLEET_LOG_FORMAT": "json",
            }
        )
        ideal = math.ceil(n / w) * s
        local = bench_local(kcfg, cluster, tmp / "results", n, w, s, auditor)
        store = RunStore.from_url(server.url, "scanfleet", 1)
        fleet = bench_fleet(env, store, n, w, s, tmp)
        server.client().flushdb()
        submit = bench_submit(env, server.url, args.submit_targets, tmp)
        server.client().flushdb()
        noop = bench_noop(server.url, w, args.noop_tasks, tmp)
        print(f"machine: {os.cpu_count()} CPUs; N={n} W={w} S={s}s; ideal {ideal:.1f}s")
        print(f"--local   wall {local['wall_s']:.2f}s  efficiency {ideal / local['wall_s']:.2f}")
        print(
            f"fleet     wall {fleet['wall_s']:.2f}s  efficiency {ideal / fleet['wall_s']:.2f}"
            f"  (one prefork worker, -c {w})"
        )
        floor = math.ceil(n / w) * local["single_scan_s"]
        print(
            f"one scan alone: {local['single_scan_s']:.2f}s (S + stand-in start + mint/revoke);"
            f" scheduling efficiency vs that floor: local {floor / local['wall_s']:.2f}, "
            f"fleet {floor / fleet['wall_s']:.2f}"
        )
        print(f"API requests per scan: {local['api_requests_per_scan']:.1f}")
        print(
            f"submit {args.submit_targets} targets: {submit['wall_s']:.2f}s wall "
            f"({submit['in_process_s']:.2f}s in-process), peak RSS "
            f"{submit['peak_rss_mb']:.0f} MB, {submit['messages']} messages, largest "
            f"{submit['largest_message_bytes']} bytes"
        )
        print(
            f"celery no-op: {noop['tasks']} tasks in {noop['wall_s']:.2f}s = "
            f"{noop['per_s']:.0f} tasks/s on -c {w} (publish {noop['publish_s']:.2f}s)"
        )
    finally:
        server.stop()
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    _ = resource


if __name__ == "__main__":
    main()
