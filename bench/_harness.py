"""Harness shared by the bench/ scripts: the copy auditor, its CPU alone, polling.

Not a test helper: imported by bench_cpu.py, bench_fleet.py and bench_sweep.py only.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "data" / "inspec-samples" / "minimal_hdf.json"

COPY_AUDITOR = """#!/bin/sh
# Writes the sample report wherever --reporter json:PATH points; nothing else.
for a; do case "$a" in json:*) cp "{report}" "${a#json:}";; esac; done
exit 0
"""


def copy_auditor(directory: Path) -> Path:
    """An auditor that only copies the sample report (the path is baked in: the auditor
    gets an allow-listed environment)."""
    directory.mkdir(parents=True, exist_ok=True)
    auditor = directory / "copy-auditor"
    auditor.write_text(COPY_AUDITOR.replace("{report}", str(SAMPLE)))
    auditor.chmod(0o755)
    return auditor


def auditor_cpu(
    auditor: Path, tmp: Path, env: dict[str, str], runs: int = 50
) -> tuple[float, float]:
    """CPU and wall seconds of one auditor invocation alone (what the stand-in costs)."""
    argv = [
        str(auditor),
        "exec",
        "p",
        "-t",
        "k8s-container://a/b/c",
        "--reporter",
        f"json:{tmp / 'probe.json'}",
    ]
    before, t0 = os.times(), time.monotonic()
    for _ in range(runs):
        subprocess.run(argv, env=env, check=True)
    after, wall = os.times(), time.monotonic() - t0
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return cpu / runs, wall / runs


def wait_until(pred: Callable[[], Any], timeout: float, every: float = 0.05) -> Any:
    """Poll until pred() is truthy; TimeoutError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark step did not finish in time")
        time.sleep(every)


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares intercept and slope."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return my - slope * mx, slope
