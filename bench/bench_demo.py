"""Wall time of `scanfleet demo` as a new user runs it (the issue's target: under 60 s).

Runs this interpreter's `scanfleet` console script in an empty temp directory, with HOME an
empty temp directory and no KUBECONFIG or SCANFLEET_* variables, and prints the time, the
exit code and the run id. `--broker redis://…` times the fleet mode (needs that Redis).

    python bench/bench_demo.py [--repeat N] [--broker URL]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def once(broker: str | None) -> tuple[float, int, str]:
    script = Path(sys.executable).parent / "scanfleet"
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("SCANFLEET_", "KUBECONFIG"))
        }
        env["HOME"] = str(home)
        args = [str(script), "demo", *(["--broker", broker] if broker else [])]
        started = time.perf_counter()
        proc = subprocess.run(args, cwd=tmp, env=env, capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - started
    first = proc.stdout.splitlines()[0] if proc.stdout else proc.stderr.strip()[-200:]
    return elapsed, proc.returncode, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--broker", default=None)
    args = parser.parse_args()
    times = []
    for i in range(args.repeat):
        elapsed, code, first = once(args.broker)
        times.append(elapsed)
        print(f"run {i + 1}: {elapsed:.1f}s  exit {code}  {first}")
    mode = "fleet" if args.broker else "local"
    best, worst = min(times), max(times)
    print(f"scanfleet demo ({mode}): best {best:.1f}s, worst {worst:.1f}s (target < 60s)")


if __name__ == "__main__":
    main()
