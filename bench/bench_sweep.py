"""Sweep benchmark (#20): a fleet-sized run through real workers, measured per size.

    python bench/bench_sweep.py                    # sizes 100, 1k, 5k, 10k (the full table)
    python bench/bench_sweep.py --sizes 100,1k     # a quick look
    python bench/bench_sweep.py --results s3       # results in moto's S3 server, started here
    python bench/bench_sweep.py --results s3://bucket/prefix   # results in your object store

Five simulated clusters (scanfleet.testing.fakekube, in this process) of 2,000 running pods
each, every request answered 50 ms late; a per-cluster cap of 20; four `scanfleet worker`
processes of eight pool processes each and a redis-server of their own (fresh per size);
an auditor that only copies a report. A size of N discovers N/5 pods in each cluster
(`submit --all-contexts --namespace ...`; 100 uses a namespace of 20 pods per cluster), so
submit includes discovery at the clusters' latency.

Per size it prints: wall time from the run's creation to its finalize against the bound
(targets x audit time / slots, slots = min(workers x processes, clusters x cap)); the
workers' CPU per scan (every process of the four workers' sessions, reaped children
included, less the copy auditor's own CPU, after a warm-up run); submit time and fan-out
time (until the last `run.fanned_out`); finalize time (last `scan.finished` to
`run.finished`, from the workers' logs); Redis peak memory (INFO memory); the workers' RSS
(peak of all processes together and of the largest one); the peak of concurrent scans per
cluster (leases, sampled every 0.1 s; the fake clusters' exact peak of scan identities is
printed too) and of API requests per second per cluster; `report --format json|html` time.
Then the budgets of issue #20 against the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._harness import SAMPLE, auditor_cpu, copy_auditor, wait_until  # noqa: E402
from scanfleet.store.state import RunStore  # noqa: E402
from scanfleet.testing.fakekube import FakeCluster, write_kubeconfig  # noqa: E402
from tests.support.fixtures_fleet import CLI, RedisServer  # noqa: E402

PREFIX = "scanfleet"
PER_NAMESPACE = 200
SMALL = 20
TICK = os.sysconf("SC_CLK_TCK")


def parse_size(text: str) -> int:
    text = text.strip().lower()
    return int(float(text[:-1]) * 1000) if text.endswith("k") else int(text)


def namespaces_for(n: int, clusters: int, pods: int) -> list[str]:
    per = n // clusters
    if n % clusters or not (per == SMALL or (per % PER_NAMESPACE == 0 and per <= pods)):
        raise SystemExit(
            f"bench: size {n} must give {SMALL} or a multiple of {PER_NAMESPACE} pods "
            f"(at most {pods}) in each of {clusters} clusters"
        )
    return ["small"] if per == SMALL else [f"ns-{i:02d}" for i in range(per // PER_NAMESPACE)]


def seed(cluster: FakeCluster, pods: int) -> None:
    for ns, count in [("small", SMALL)] + [
        (f"ns-{i:02d}", PER_NAMESPACE) for i in range(pods // PER_NAMESPACE)
    ]:
        cluster.add_namespace(ns)
        for i in range(count):
            name = f"p-{i:04d}"
            # Distinct image IDs: no target covers another (every target is a scan).
            image = ("app", "registry.example/app:1", f"sha256:{cluster.name}-{ns}-{i}")
            cluster.add_pod(ns, name, containers=[image])


# -- the workers' processes --------------------------------------------------------------
def _stat(pid: str) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def session_pids(sessions: set[int]) -> list[str]:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            st = _stat(pid)
            if st is not None and int(st[3]) in sessions:
                out.append(pid)
    return out


def session_cpu(sessions: set[int]) -> float:
    """CPU seconds of every live process of the sessions, with the children they reaped."""
    total = 0
    for pid in session_pids(sessions):
        st = _stat(pid)
        if st is not None:
            total += sum(int(x) for x in st[11:15])  # utime stime cutime cstime
    return total / TICK


def rss_mb(pid: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class Peaks:
    """What the sampler thread saw during one run."""

    scans: dict[str, int] = field(default_factory=dict)
    rps: dict[str, float] = field(default_factory=dict)
    rss_total_mb: float = 0.0
    rss_proc_mb: float = 0.0
    redis_mb: float = 0.0


class Sampler(threading.Thread):
    def __init__(self, store: RunStore, clusters: dict[str, FakeCluster], sessions: set[int]):
        super().__init__(daemon=True)
        self.store, self.clusters, self.sessions = store, clusters, sessions
        self.peaks = Peaks({c: 0 for c in clusters}, {c: 0.0 for c in clusters})
        self.stop = threading.Event()

    def run(self) -> None:
        last = {c: (time.monotonic(), len(k.request_log)) for c, k in self.clusters.items()}
        n = 0
        while not self.stop.wait(0.1):
            n += 1
            for c in self.clusters:
                held = int(self.store.r.zcard(self.store.lease_key(c)))
                self.peaks.scans[c] = max(self.peaks.scans[c], held)
            if n % 10:
                continue
            for c, k in self.clusters.items():  # once a second: requests, memory
                now, count = time.monotonic(), len(k.request_log)
                t0, c0 = last[c]
                self.peaks.rps[c] = max(self.peaks.rps[c], (count - c0) / (now - t0))
                last[c] = (now, count)
            sizes = [rss_mb(p) for p in session_pids(self.sessions)]
            self.peaks.rss_total_mb = max(self.peaks.rss_total_mb, sum(sizes))
            self.peaks.rss_proc_mb = max(self.peaks.rss_proc_mb, max(sizes, default=0))
            used = int(self.store.r.info("memory")["used_memory"])
            self.peaks.redis_mb = max(self.peaks.redis_mb, used / 2**20)


def events(logs: list[Path], run_id: str, name: str) -> list[float]:
    """Epoch times of the workers' log events `name` of the run."""
    out = []
    decoder = json.JSONDecoder()
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            if f'"{name}"' not in line or run_id not in line:
                continue
            # Pool processes share the worker's stdout: a line may hold two objects.
            pos = line.find("{")
            while pos != -1:
                try:
                    e, end = decoder.raw_decode(line, pos)
                except ValueError:
                    break
                if e.get("event") == name and e.get("run_id") == run_id:
                    out.append(datetime.fromisoformat(e["timestamp"]).timestamp())
                pos = line.find("{", end)
    return out


@contextlib.contextmanager
def moto_s3(tmp: Path) -> Iterator[dict[str, str]]:
    """moto's S3 server in a process of its own on loopback, with one bucket: the env to use."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (tmp / "moto.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(endpoint), 60)
        req = urllib.request.Request(f"{endpoint}/bench-results", method="PUT")
        urllib.request.urlopen(req, timeout=10).close()  # moto: no signature needed
        yield {
            "AWS_ACCESS_KEY_ID": "AKIABENCHSWEEP",
            "AWS_SECRET_ACCESS_KEY": "bench-sweep-secret",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "SCANFLEET_S3_ENDPOINT": endpoint,
            "SCANFLEET_RESULTS_DIR": "s3://bench-results/runs",
        }
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        log.close()


def _answers(endpoint: str) -> bool:
    try:
        urllib.request.urlopen(endpoint, timeout=2).close()
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.monotonic()
    p = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    return time.monotonic() - t0, p


@dataclass
class Row:
    n: int
    submit_s: float
    fan_out_s: float
    wall_s: float
    bound_s: float
    cpu_ms: float
    finalize_s: float
    redis_peak_mb: float
    peaks: Peaks
    report_json_s: float
    report_html_s: float


def run_size(
    n: int, args: argparse.Namespace, base_env: dict[str, str], tmp: Path, ctx: dict[str, Any]
) -> Row:
    clusters: dict[str, FakeCluster] = ctx["clusters"]
    server = RedisServer(tmp / f"redis-{n}", appendonly=False).start()
    env = {**base_env, "SCANFLEET_BROKER_URL": server.url}
    if args.results == "disk":
        env["SCANFLEET_RESULTS_DIR"] = str(tmp / f"results-{n}")
    elif args.results != "s3":  # "s3": main() put moto's server in base_env
        env["SCANFLEET_RESULTS_DIR"] = args.results
    store = RunStore.from_url(server.url, PREFIX, 1)
    workers: list[subprocess.Popen[bytes]] = []
    logs = [tmp / f"worker-{n}-{i}.log" for i in range(args.workers)]
    try:
        for log in logs:
            with log.open("wb") as out:
                workers.append(
                    subprocess.Popen(
                        [*CLI, "worker", "-c", str(args.procs), "--loglevel", "INFO"],
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        for log in logs:
            wait_until(lambda log=log: b'"worker.ready"' in log.read_bytes(), 120)
        sessions = {w.pid for w in workers}
        # Warm-up: every pool process imports, connects and scans once.
        warm = tmp / "warm.json"
        warm.write_text(
            json.dumps(
                [
                    {"context": c, "namespace": "small", "pod": f"p-{i:04d}", "container": "app"}
                    for c in clusters
                    for i in range(SMALL)
                ][: 2 * args.workers * args.procs]
            )
        )
        _, p = timed([*CLI, "submit", "--targets-file", str(warm), "--profile", "p"], env)
        warm_id = p.stdout.split("\n", 1)[0].strip()
        wait_until(lambda: store.is_finalized(warm_id), 300, every=0.2)
        for c in clusters.values():
            c.clear_request_log()

        cpu0 = session_cpu(sessions)
        sampler = Sampler(store, clusters, sessions)
        sampler.start()
        spaces = namespaces_for(n, len(clusters), args.pods)
        scope = [a for ns in spaces for a in ("--namespace", ns)]
        submitted = time.time()
        submit_s, p = timed(
            [*CLI, "submit", "--all-contexts", *scope, "--profile", "p", "--json"], env
        )
        if p.returncode != 0:
            raise SystemExit(f"bench: submit failed: {p.stderr[-2000:]}")
        run_id = json.loads(p.stdout)["run_id"]  # --json: one document
        created = time.monotonic()
        wait_until(lambda: store.is_finalized(run_id), 7200, every=0.2)
        wall = time.monotonic() - created
        sampler.stop.set()
        sampler.join(5)
        cpu = session_cpu(sessions) - cpu0
        status = store.status(run_id)
        if status is None or status.done != n:
            raise SystemExit(f"bench: run {run_id} ended with {status}, expected {n} results")

        fanned = events(logs, run_id, "run.fanned_out")
        finished = events(logs, run_id, "scan.finished")
        final = events(logs, run_id, "run.finished")
        report_env = {**env}
        rj, pj = timed(
            [*CLI, "report", run_id, "--format", "json", "--output", str(tmp / "r.json")],
            report_env,
        )
        rh, ph = timed(
            [*CLI, "report", run_id, "--format", "html", "--output", str(tmp / "r.html")],
            report_env,
        )
        for what, proc in (("json", pj), ("html", ph)):
            if proc.returncode not in (0, 1, 3):
                raise SystemExit(f"bench: report {what} failed: {proc.stderr[-2000:]}")
        info = store.r.info("memory")
        slots = min(args.workers * args.procs, len(clusters) * args.cap)
        return Row(
            n=n,
            submit_s=submit_s,
            fan_out_s=(max(fanned) - submitted - submit_s) if fanned else float("nan"),
            wall_s=wall,
            bound_s=n * ctx["audit_wall"] / slots,
            cpu_ms=(cpu - n * ctx["audit_cpu"]) / n * 1000,
            finalize_s=(max(final) - max(finished)) if final and finished else float("nan"),
            redis_peak_mb=max(sampler.peaks.redis_mb, int(info["used_memory_peak"]) / 2**20),
            peaks=sampler.peaks,
            report_json_s=rj,
            report_html_s=rh,
        )
    finally:
        for w in workers:
            try:
                os.killpg(w.pid, signal.SIGTERM)
                w.wait(60)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(w.pid, signal.SIGKILL)
        server.stop()
        for c in clusters.values():
            c.clear_request_log()


def print_table(rows: list[Row], args: argparse.Namespace, ctx: dict[str, Any]) -> None:
    print(
        f"\nmachine: {os.cpu_count()} CPUs; {len(ctx['clusters'])} clusters x {args.pods} pods, "
        f"{args.latency * 1000:.0f} ms API latency, cap {args.cap}/cluster, "
        f"{args.workers} workers x {args.procs} processes, results: {args.results}; copy "
        f"auditor alone {ctx['audit_wall'] * 1000:.1f} ms wall, {ctx['audit_cpu'] * 1000:.1f} "
        "ms CPU"
    )
    head = (
        f"{'targets':>7} {'submit':>7} {'fan-out':>7} {'wall':>8} {'bound':>7} "
        f"{'CPU/scan':>9} {'final':>6} {'redis':>7} {'RSS all':>8} {'RSS 1':>6} "
        f"{'scans/cl':>8} {'req/s/cl':>8} {'rep json':>8} {'rep html':>8}"
    )
    print(head)
    print(
        f"{'':>7} {'s':>7} {'s':>7} {'s':>8} {'s':>7} {'ms':>9} {'s':>6} {'MB':>7} "
        f"{'MB':>8} {'MB':>6} {'peak':>8} {'peak':>8} {'s':>8} {'s':>8}"
    )
    for r in rows:
        print(
            f"{r.n:>7} {r.submit_s:>7.2f} {r.fan_out_s:>7.2f} {r.wall_s:>8.1f} "
            f"{r.bound_s:>7.1f} {r.cpu_ms:>9.1f} {r.finalize_s:>6.2f} {r.redis_peak_mb:>7.1f} "
            f"{r.peaks.rss_total_mb:>8.0f} {r.peaks.rss_proc_mb:>6.0f} "
            f"{max(r.peaks.scans.values()):>8} {max(r.peaks.rps.values()):>8.0f} "
            f"{r.report_json_s:>8.2f} {r.report_html_s:>8.2f}"
        )
    sa_peak = max(c.peak_scanfleet_serviceaccounts for c in ctx["clusters"].values())
    print(f"scan identities alive at once, exact, any cluster, whole bench: {sa_peak}")
    budgets(rows, args, sa_peak)


def budgets(rows: list[Row], args: argparse.Namespace, sa_peak: int) -> None:
    by = {r.n: r for r in rows}
    big = rows[-1]
    checks: list[tuple[str, bool | None, str]] = []
    worst = max(max(r.peaks.scans.values()) for r in rows)
    checks.append(
        (
            "per-cluster cap never exceeded",
            worst <= args.cap and sa_peak <= args.cap,
            f"leases {worst}, identities {sa_peak}, cap {args.cap}",
        )
    )
    checks.append(
        (
            f"Redis below 64 MB at {big.n}",
            big.redis_peak_mb < 64 if big.n >= 10000 else None,
            f"{big.redis_peak_mb:.1f} MB",
        )
    )
    if 1000 in by and big.n > 1000:
        grow = big.peaks.rss_proc_mb / by[1000].peaks.rss_proc_mb - 1
        grow_all = big.peaks.rss_total_mb / by[1000].peaks.rss_total_mb - 1
        checks.append(
            (
                f"worker RSS flat 1k -> {big.n} (10 %)",
                abs(grow) <= 0.10 and abs(grow_all) <= 0.10,
                f"largest process {grow:+.0%}, all {grow_all:+.0%}",
            )
        )
    checks.append(
        (
            f"finalize and JSON report of {big.n} under 5 s",
            (big.finalize_s < 5 and big.report_json_s < 5) if big.n >= 10000 else None,
            f"finalize {big.finalize_s:.2f} s, report json {big.report_json_s:.2f} s",
        )
    )
    if 100 in by and big.n > 100:
        ratio = big.cpu_ms / by[100].cpu_ms - 1
        checks.append(
            (
                f"CPU per scan at {big.n} within 20 % of 100",
                abs(ratio) <= 0.20,
                f"{big.cpu_ms:.1f} vs {by[100].cpu_ms:.1f} ms ({ratio:+.0%})",
            )
        )
    print("\nbudgets (issue #20):")
    for what, ok, detail in checks:
        verdict = "n/a (size too small)" if ok is None else ("ok" if ok else "MISSED")
        print(f"  {what:<45} {verdict:<22} {detail}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100,1k,5k,10k", help="comma-separated, e.g. 100,1k")
    ap.add_argument("--clusters", type=int, default=5)
    ap.add_argument("--pods", type=int, default=2000, help="running pods per cluster")
    ap.add_argument("--latency", type=float, default=0.05, help="API latency, seconds")
    ap.add_argument("--cap", type=int, default=20, help="scans at once per cluster")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--procs", type=int, default=8, help="pool processes per worker")
    ap.add_argument(
        "--results",
        default="disk",
        help="disk (a directory per size); s3 (moto's S3 server on loopback, started here); "
        "or a results URL such as s3://bucket/prefix passed to the workers as "
        "SCANFLEET_RESULTS_DIR (credentials and SCANFLEET_S3_ENDPOINT from the environment)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    sizes = sorted(parse_size(s) for s in args.sizes.split(","))
    names = [f"c{i}" for i in range(args.clusters)]
    for n in sizes:
        namespaces_for(n, args.clusters, args.pods)  # bad sizes fail before anything starts
    tmp = Path(tempfile.mkdtemp(prefix="scanfleet-bench-sweep-"))
    clusters = {name: FakeCluster(name=name).start() for name in names}
    stack = contextlib.ExitStack()
    try:
        for c in clusters.values():
            seed(c, args.pods)
            c.set_latency(args.latency)
        (tmp / "admin").mkdir()
        kcfg = write_kubeconfig(tmp / "admin" / "kubeconfig", clusters, current=names[0])
        auditor = copy_auditor(tmp / "auditor")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCANFLEET_")}
        env.update(
            {
                "KUBECONFIG": str(kcfg),
                "SCANFLEET_AUDITOR": str(auditor),
                "SCANFLEET_TOKEN_TTL": "900",
                "SCANFLEET_SCAN_TIMEOUT": "120",
                "SCANFLEET_CLUSTER_CONCURRENCY": str(args.cap),
                "SCANFLEET_LOG_FORMAT": "json",
                "SCANFLEET_SANDBOX_ALLOW_READ": os.pathsep.join(
                    [str(auditor.parent), str(SAMPLE.parent)]
                ),
            }
        )
        if args.results == "s3":
            env.update(stack.enter_context(moto_s3(tmp)))
        audit_cpu, audit_wall = auditor_cpu(auditor, tmp / "auditor", env)
        ctx = {"clusters": clusters, "audit_cpu": audit_cpu, "audit_wall": audit_wall}
        rows = []
        for n in sizes:
            t0 = time.monotonic()
            rows.append(run_size(n, args, env, tmp, ctx))
            print(f"size {n}: done in {time.monotonic() - t0:.0f} s", file=sys.stderr)
        print_table(rows, args, ctx)
    finally:
        stack.close()
        for c in clusters.values():
            c.stop()
        if args.keep:
            print(f"work directory kept: {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
