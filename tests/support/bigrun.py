"""A large run built from the real sample reports: `write_big_run(results, 2000)`.

Targets cycle through the samples (each parsed once, as `scan_target` parses a report),
spread over three clusters and twenty namespaces; every 50th target could not be scanned.
Used by the Chromium tests and by bench/bench_report_html.py.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

from scanfleet.judging.aggregate import Aggregator
from scanfleet.judging.documents import error_summary, failed_controls, scanned_summary
from scanfleet.judging.report import Control, Counts, control_ids, load_report
from scanfleet.judging.thresholds import parse_threshold
from scanfleet.store.files import run_dir, summary_path
from scanfleet.store.files import write_json as write_json_file
from tests.support.paths import SAMPLES

BIG_RUN_ID = "20260302T020000Z-b16b16"
THRESHOLD = {"compliance": {"min": 30}, "failed": {"critical": {"max": 0}}}
SAMPLE_NAMES = sorted(p.name for p in SAMPLES.glob("*.json"))


def big_target(n: int) -> dict[str, Any]:
    return {
        "context": f"cluster-{n % 3}",
        "namespace": f"ns-{n % 20:02d}",
        "pod": f"pod-{n:05d}",
        "container": "app" if n % 4 else "sidecar",
        "image": f"registry.example/app-{n % 40}:1.{n % 7}",
        "image_id": f"sha256:{n % 40:064x}",
    }


def big_scan_id(run_id: str, n: int) -> str:
    return hashlib.sha256(f"{run_id}\0{n}".encode()).hexdigest()[:16]


def write_big_run(
    results: Path,
    n: int,
    run_id: str = BIG_RUN_ID,
    reports: bool = False,
    *,
    offset: int = 0,
    source: str = "submit",
) -> dict[str, Any]:
    """Write n target summaries (and, with `reports`, their raw reports) and run.json.
    Target i gets sample `(i + offset) % len(SAMPLE_NAMES)`."""
    out = run_dir(results, run_id)
    out.mkdir(parents=True, exist_ok=True)
    parsed: dict[str, list[Control]] = {s: load_report(SAMPLES / s) for s in SAMPLE_NAMES}
    threshold = parse_threshold(THRESHOLD, "threshold.yml")
    agg = Aggregator()
    for i in range(n):
        sid, target = big_scan_id(run_id, i), big_target(i)
        times = {"started_at": "2026-03-02T02:00:00Z", "finished_at": "2026-03-02T02:01:00Z"}
        summary: Any
        if i % 50 == 49:
            summary = error_summary(
                scan_id=sid,
                run_id=run_id,
                target=target,  # type: ignore[arg-type]
                error={"kind": "timeout", "message": f"auditor timed out on pod-{i:05d}"},
                duration_s=60.0,
                **times,
            )
        else:
            sample = SAMPLE_NAMES[(i + offset) % len(SAMPLE_NAMES)]
            controls = parsed[sample]
            counts, ids = Counts.from_controls(controls), control_ids(controls)
            failures = threshold.evaluate(counts, ids)
            summary = scanned_summary(
                scan_id=sid,
                run_id=run_id,
                target=target,  # type: ignore[arg-type]
                duration_s=60.0,
                cleanup="complete",
                counts=counts,
                ids=ids,
                threshold={"passed": not failures, "failures": failures},
                failed=failed_controls(controls),
                profile_sha256="ab" * 32,
                **times,
            )
            if reports:
                dest = out / f"{sid}.report.json"
                try:
                    os.link(SAMPLES / sample, dest)
                except OSError:
                    shutil.copyfile(SAMPLES / sample, dest)
        write_json_file(summary_path(out, sid), summary)
        agg.add(summary)
    run = {
        "run_id": run_id,
        "source": source,
        "profile": "https://example.invalid/profile.tar.gz",
        "created_at": "2026-03-02T02:00:00Z",
        "finished_at": "2026-03-02T02:20:00Z",
        **agg.result(None),
        "profile_sha256": "ab" * 32,
    }
    write_json_file(out / "run.json", run)
    return run
