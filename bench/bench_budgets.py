"""Hostile archives and reports against the budgets: time and peak memory of each refusal.

Each case runs in a fresh interpreter (so one case's peak is not another's); memory is the
growth of the peak resident set (VmHWM) over the interpreter after its imports. (Not
ru_maxrss: after fork and exec it starts at the parent's peak, here the bench's own.)

    python bench/bench_budgets.py

Cases: the issue's 2.4 MB tar of 400,000 empty entries (profile_unavailable); a tar whose
pax header declares 128 MB (profile_unavailable); a zip of
20,001 empty entries; a report nested 100,000 deep (invalid_report); a valid 22 MB report
(read); the same report over a 16 MB SCANFLEET_REPORT_MAX_BYTES (invalid_report).
"""

from __future__ import annotations

import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from scanfleet.testing.bombs import (
    big_report,
    deep_report,
    tar_of_empty_entries,
    tar_with_huge_header,
    zip_of_empty_entries,
)

CASE = """
import sys, time
from pathlib import Path
from scanfleet.core.errors import InvalidReport, ProfileUnavailable
from scanfleet.judging.report import load_report
from scanfleet.profiles.archives import read_manifest
def hwm():  # this process's peak RSS in KiB (ru_maxrss would start at the parent's)
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0])
kind, path, arg = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
before = hwm()
start = time.perf_counter()
try:
    if kind == "archive":
        read_manifest(path, arg, path.name)
    else:
        load_report(path, int(arg))
    outcome = "read"
except (InvalidReport, ProfileUnavailable) as e:
    outcome = type(e).__name__ + ": " + str(e)[-100:]
elapsed = time.perf_counter() - start
grown = hwm() - before
print(f"{elapsed:8.3f} s  {grown / 1024:7.1f} MB  {outcome}")
"""


def main() -> None:
    print(f"kernel {platform.release()}, python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        files = {
            "tar, 400,000 empty entries": (
                "archive",
                d / "bomb.tar.gz",
                tar_of_empty_entries(400_000),
                ".tar.gz",
            ),
            "tar, one 128 MB pax header": (
                "archive",
                d / "header.tar.gz",
                tar_with_huge_header(128 << 20),
                ".tar.gz",
            ),
            "zip, 20,001 empty entries": (
                "archive",
                d / "bomb.zip",
                zip_of_empty_entries(20_001),
                ".zip",
            ),
            "report nested 100,000 deep": (
                "report",
                d / "deep.json",
                deep_report(100_000),
                str(256 << 20),
            ),
            "report of 22 MB": ("report", d / "big.json", big_report(22 << 20), str(256 << 20)),
            "report of 22 MB, cap 16 MB": (
                "report",
                d / "big.json",
                big_report(22 << 20),
                str(16 << 20),
            ),
        }
        for name, (kind, path, data, arg) in files.items():
            path.write_bytes(data)
            out = subprocess.run(
                [sys.executable, "-c", CASE, kind, str(path), arg],
                capture_output=True,
                text=True,
                check=True,
            )
            print(f"{name:30} {len(data) / 1e6:6.1f} MB file  {out.stdout.strip()}")


if __name__ == "__main__":
    main()
