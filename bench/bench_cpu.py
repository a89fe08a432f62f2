"""CPU benchmark: scanfleet's own CPU per run (fixed) and per scan, and its memory.

    python bench/bench_cpu.py [--sizes 24,100,400,1000] [--concurrency 8] [--no-sandbox]

Runs `scanfleet submit --local --concurrency C` as a child process against the fake API
server (in this process, so its CPU is not counted) over N explicit targets, with an
auditor that only copies a sample report (`/bin/sh` + `cp`; the path is baked in, as the
auditor gets an allow-listed environment). The child's CPU comes from
`wait4` (it includes the auditors it reaped); the auditor's own CPU, measured alone, is
subtracted. A least-squares line over the sizes gives:

- fixed CPU per run (the intercept: start-up, imports, client set-up, finalize);
- CPU per scan (the slope: everything scanfleet does per target);
- wall per target at the largest size, and peak RSS per size;
- the same split into the scanfleet process's own CPU and what it spawns per scan (the
  sandbox launcher's fork per audit, `scanfleet.sandbox.forkserver`, and the auditor
  beyond the stand-in).

It also prints the CPU of `scanfleet --version` and `scanfleet --help`, which must not
import the kubernetes client or Celery.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._harness import SAMPLE, auditor_cpu, copy_auditor, fit  # noqa: E402
from scanfleet.testing.fakekube import FakeCluster  # noqa: E402

CLI = [sys.executable, "-c", "from scanfleet.cli import main; main()"]
# The same, also writing its own CPU and its reaped children's (the sandbox launcher and
# the auditors) to $BENCH_RUSAGE_FILE at exit: the split between scanfleet and what it spawns.
CLI_SPLIT = [
    sys.executable,
    "-c",
    """
import atexit, json, os, resource
def _dump():
    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    with open(os.environ["BENCH_RUSAGE_FILE"], "w") as f:
        json.dump([own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime], f)
atexit.register(_dump)
from scanfleet.cli import main
main()
""",
]


def child_cpu(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Run argv; return (CPU seconds incl. reaped descendants, wall seconds, peak RSS KiB)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"bench: {argv[3:5]} exited {proc.returncode}")
    return usage.ru_utime + usage.ru_stime, wall, usage.ru_maxrss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="24,100,400,1000")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument(
        "--no-sandbox",
        action="store_true",
        help="SCANFLEET_SANDBOX=off: no Landlock policy (the launcher still forks each auditor)",
    )
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="scanfleet-bench-cpu-"))
    cluster = FakeCluster(name="bench").start()
    try:
        cluster.add_namespace("bench")
        for i in range(max(sizes)):
            cluster.add_pod("bench", f"pod-{i:04d}", containers=[("app", "img:1", f"sha256:{i}")])
        # The admin kubeconfig lives outside what the sandbox lets the auditor read.
        (tmp / "admin").mkdir()
        kcfg = cluster.write_kubeconfig(tmp / "admin" / "kubeconfig", context="bench")
        work = tmp / "work"
        work.mkdir()
        auditor = copy_auditor(work)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCANFLEET_")}
        env.update(
            {
                "KUBECONFIG": str(kcfg),
                "SCANFLEET_AUDITOR": str(auditor),
                "SCANFLEET_RESULTS_DIR": str(tmp / "results"),
                "SCANFLEET_TOKEN_TTL": "900",
                "SCANFLEET_SCAN_TIMEOUT": "120",
                "SCANFLEET_CLUSTER_CONCURRENCY": "64",
                "SCANFLEET_SANDBOX_ALLOW_READ": os.pathsep.join([str(work), str(SAMPLE.parent)]),
            }
        )
        if args.no_sandbox:
            env["SCANFLEET_SANDBOX"] = "off"
        per_auditor, _ = auditor_cpu(auditor, work, env)
        for flag in ("--version", "--help"):
            cpu, wall, _ = child_cpu([*CLI, flag], env)
            print(f"scanfleet {flag}: {cpu * 1000:.0f} ms CPU, {wall * 1000:.0f} ms wall")
        xs: list[float] = []
        ys: list[float] = []
        own_ys: list[float] = []
        env["BENCH_RUSAGE_FILE"] = str(tmp / "rusage.json")
        for n in sizes:
            targets = [
                {
                    "context": "bench",
                    "namespace": "bench",
                    "pod": f"pod-{i:04d}",
                    "container": "app",
                }
                for i in range(n)
            ]
            tf = work / f"targets-{n}.json"
            tf.write_text(json.dumps(targets))
            cpu, wall, rss = child_cpu(
                [
                    *CLI_SPLIT,
                    "submit",
                    "--local",
                    "--concurrency",
                    str(args.concurrency),
                    "--targets-file",
                    str(tf),
                    "--profile",
                    str(work),
                ],
                env,
            )
            own = cpu - n * per_auditor
            xs.append(n)
            ys.append(own)
            own_ys.append(json.loads((tmp / "rusage.json").read_text())[0])
            print(
                f"N={n:5d}: scanfleet CPU {own:6.2f} s ({own / n * 1000:5.1f} ms/target), "
                f"wall {wall:6.2f} s ({wall / n * 1000:5.1f} ms/target), "
                f"peak RSS {rss / 1024:.0f} MB"
            )
        fixed, slope = fit(xs, ys)
        own_fixed, own_slope = fit(xs, own_ys)
        print(f"auditor stand-in alone: {per_auditor * 1000:.1f} ms CPU per call (subtracted)")
        print(f"fit: fixed CPU per run {fixed:.2f} s, CPU per scan {slope * 1000:.1f} ms")
        print(
            f"  of which the scanfleet process: fixed {own_fixed:.2f} s, per scan "
            f"{own_slope * 1000:.1f} ms; spawned (launcher, auditor less the stand-in): "
            f"per scan {(slope - own_slope) * 1000:.1f} ms"
        )
    finally:
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
