"""Metrics overhead: fleet scans per second with and without worker metrics, same setup.

    python bench/bench_metrics.py [--n 60] [--w 4] [--rounds 3] [--sleep 0]

One fake API server, one redis-server and one results dir for every round. Each round
starts a fresh `scanfleet worker -c W` — alternately without and with
`SCANFLEET_METRICS_PORT` (multiprocess mode, /metrics scraped every 0.5 s during the run,
as a busy Prometheus would) — warms it up with W scans, then times N scans from the run's
creation to its finalization. Prints the median scans/s of each mode, their difference,
and the spread between rounds of the same mode (the noise the difference is judged by).
Also the metrics work one scan causes (every hook it triggers), timed in-process:
the deterministic part of the overhead, which the wall-clock rounds can only bound.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_fleet import fast_standin, seed, wait_until  # noqa: E402

from scanfleet.core import logs  # noqa: E402
from scanfleet.store.state import RunStore  # noqa: E402
from scanfleet.testing.fakekube import FakeCluster  # noqa: E402
from tests.support.fixtures_fleet import CLI, RedisServer, free_port  # noqa: E402


def _scraper(port: int, stop: threading.Event) -> None:
    while not stop.wait(0.5):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                r.read()
        except OSError:
            pass


def one_round(
    env: dict[str, str],
    store: RunStore,
    n: int,
    w: int,
    tmp: Path,
    tag: str,
    metrics_port: int | None,
) -> float:
    """Scans per second of N scans on a fresh worker."""
    if metrics_port is not None:
        env = {**env, "SCANFLEET_METRICS_PORT": str(metrics_port)}
    log_path = tmp / f"worker-{tag}.log"
    log = log_path.open("wb")
    worker = subprocess.Popen(
        [*CLI, "worker", "-c", str(w)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    stop = threading.Event()
    try:
        wait_until(lambda: b'"worker.ready"' in log_path.read_bytes(), 60)

        def run(count: int, name: str) -> float:
            targets = [
                {
                    "context": "bench",
                    "namespace": "bench",
                    "pod": f"pod-{i:03d}",
                    "container": "app",
                }
                for i in range(count)
            ]
            tf = tmp / f"targets-{name}.json"
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
            t0 = time.monotonic()
            wait_until(lambda: store.is_finalized(run_id), 600)
            elapsed = time.monotonic() - t0
            p.wait(30)
            return elapsed

        run(w, f"{tag}-warm")
        if metrics_port is not None:
            threading.Thread(target=_scraper, args=(metrics_port, stop), daemon=True).start()
        return n / run(n, tag)
    finally:
        stop.set()
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(60)
        log.close()


def hook_cost(scans: int = 5000) -> float:
    """Microseconds of metrics work one scan causes, multiprocess mode, in-process.

    One scan's hooks: a slot taken and released, the identity's three phases (gauge up and
    down), nine API requests (read pod, three creates, a token, three deletes, one more
    read), and the recorded result (counter and total duration).
    """
    from scanfleet.core import metrics

    class Kube:
        context = "c"

    directory = tempfile.mkdtemp(prefix="scanfleet-bench-metrics-")
    try:
        metrics.use_multiprocess(directory)
        summary = {
            "target": {"context": "c"},
            "status": "completed",
            "covered_by": None,
            "error": None,
            "duration_s": 1.5,
        }
        whats = [
            "reading pod",
            "creating ServiceAccount",
            "creating Role",
            "creating RoleBinding",
            "requesting a token",
            "deleting RoleBinding",
            "deleting Role",
            "deleting ServiceAccount",
            "reading pod",
        ]
        t0 = time.perf_counter()
        for _ in range(scans):
            metrics.slot_acquired("c")
            phases = metrics.identity_phases(Kube())
            for what in whats:
                metrics.api_call("c", what, lambda: None)()
            phases.minted()
            phases.revoking()
            phases.revoked("complete")
            metrics.slot_released("c")
            metrics.scan_recorded(summary, 1)
        return (time.perf_counter() - t0) / scans * 1e6
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--w", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sleep", type=float, default=0.0, help="stand-in auditor seconds")
    args = ap.parse_args()
    logs.configure("console", level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="scanfleet-bench-metrics-"))
    cluster = FakeCluster(name="bench").start()
    server = RedisServer(tmp / "redis", appendonly=False).start()
    try:
        seed(cluster, args.n)
        kcfg = cluster.write_kubeconfig(tmp / "kubeconfig", context="bench")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCANFLEET_")}
        env.update(
            {
                "SCANFLEET_BROKER_URL": server.url,
                "SCANFLEET_RESULTS_DIR": str(tmp / "results"),
                "SCANFLEET_AUDITOR": str(fast_standin(tmp)),
                "SCANFLEET_CLUSTER_CONCURRENCY": str(max(args.w, 10)),
                "SCANFLEET_TOKEN_TTL": "900",
                "SCANFLEET_SCAN_TIMEOUT": "120",
                "KUBECONFIG": str(kcfg),
                "SCANFLEET_LOG_FORMAT": "json",
                "SCANFLEET_STANDIN_SLEEP": str(args.sleep),
            }
        )
        store = RunStore.from_url(server.url, "scanfleet", 1)
        off: list[float] = []
        on: list[float] = []
        for i in range(args.rounds):  # alternate, so drift in the machine hits both alike
            off.append(one_round(env, store, args.n, args.w, tmp, f"off{i}", None))
            on.append(one_round(env, store, args.n, args.w, tmp, f"on{i}", free_port()))
        m_off, m_on = statistics.median(off), statistics.median(on)
        print(
            f"machine: {os.cpu_count()} CPUs; N={args.n} W={args.w} S={args.sleep}s; "
            f"{args.rounds} rounds each, alternating"
        )
        print(
            "without metrics: " + " ".join(f"{x:.2f}" for x in off) + f"  median {m_off:.2f}"
            " scans/s"
        )
        print(
            "with metrics:    " + " ".join(f"{x:.2f}" for x in on) + f"  median {m_on:.2f} scans/s"
        )
        print(
            f"difference: {100 * (m_on - m_off) / m_off:+.1f}% (spread between rounds: "
            f"without {100 * (max(off) - min(off)) / m_off:.1f}%, "
            f"with {100 * (max(on) - min(on)) / m_on:.1f}%)"
        )
        cost = hook_cost()
        print(
            f"metrics work per scan: {cost:.0f} us (multiprocess mode, in-process) = "
            f"{100 * cost * 1e-6 * m_off / args.w:.2f}% of a pool process' time per scan at "
            f"{m_off:.2f} scans/s on -c {args.w}"
        )
    finally:
        server.stop()
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
