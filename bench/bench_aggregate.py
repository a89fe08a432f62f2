"""Aggregate 10,000 synthetic target summaries of ~200 controls each; print time and memory.

Summaries are streamed from a generator, as the run service streams them from the store, so
the peak memory shown is the aggregator's own (plus one summary in flight).

    python bench/bench_aggregate.py [--targets N] [--controls N]
"""

from __future__ import annotations

import argparse
import random
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

from scanfleet.judging.aggregate import Aggregator
from scanfleet.judging.report import SEVERITIES, STATUSES, Control, Counts, control_ids
from scanfleet.judging.thresholds import parse_fleet_threshold

FLEET = {
    "fleet": {"failed.critical.max": 0, "compliance": {"min": 80}},
    "targets": {"error": {"max": 50}, "compliance": {"min": 90}},
}


def summaries(targets: int, controls: int, seed: int = 1) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    weights = (70, 15, 8, 5, 2)
    for n in range(targets):
        ctx, ns = f"cluster-{n % 5}", f"ns-{n % 40}"
        target = {
            "context": ctx,
            "namespace": ns,
            "pod": f"pod-{n}",
            "container": "app",
            "image": f"registry/app:{n % 30}",
            "image_id": f"sha256:{n % 30:064x}",
        }
        base = {
            "scan_id": f"scan-{n:06d}",
            "run_id": "bench",
            "target": target,
            "covered_by": None,
            "started_at": "",
            "finished_at": "",
            "duration_s": 1.0,
            "cleanup": "complete",
        }
        if n % 97 == 0:
            yield {
                **base,
                "status": "error",
                "error": {"kind": "timeout", "message": "t"},
                "counts": None,
                "compliance": None,
                "controls": None,
                "threshold": {"passed": None, "failures": []},
            }
            continue
        ctrls = [
            Control(
                f"V-{1000 + i}", None, rng.choices(STATUSES, weights)[0], SEVERITIES[i % 5], 0.5
            )
            for i in range(controls)
        ]
        counts = Counts.from_controls(ctrls)
        failed = counts.get("failed", "critical") > 4
        yield {
            **base,
            "status": "completed",
            "error": None,
            "counts": counts.to_dict(),
            "compliance": counts.compliance,
            "controls": control_ids(ctrls),
            "threshold": {
                "passed": not failed,
                "failures": ["failed.critical.max: ..."] if failed else [],
            },
        }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--targets", type=int, default=10_000)
    parser.add_argument("--controls", type=int, default=200)
    args = parser.parse_args()
    fleet = parse_fleet_threshold(FLEET, "bench")

    # Pass 1, untraced: time only the add() calls, not the generation of summaries.
    agg = Aggregator()
    t_add = 0.0
    for s in summaries(args.targets, args.controls):
        t0 = time.perf_counter()
        agg.add(s)
        t_add += time.perf_counter() - t0
    t0 = time.perf_counter()
    result = agg.result(fleet)
    t_result = time.perf_counter() - t0

    # Pass 2, traced: peak memory of the whole streamed aggregation (one summary in flight).
    tracemalloc.start()
    agg = Aggregator()
    for s in summaries(args.targets, args.controls):
        agg.add(s)
    agg.result(fleet)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    n = result["targets"]["total"]
    print(f"targets={n} controls/target={args.controls}")
    print(f"add(): {t_add:.2f} s total, {1e6 * t_add / max(n, 1):.0f} us/target")
    print(f"result(): {1e3 * t_result:.1f} ms")
    print(f"peak traced memory: {peak / 2**20:.2f} MiB")
    print(
        f"targets={result['targets']} compliance={result['compliance']} "
        f"exit_code={result['exit_code']} fleet_passed={result['fleet_threshold']['passed']}"
    )


if __name__ == "__main__":
    main()
