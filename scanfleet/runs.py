"""A run: many target scans with one id, judged together when the last one ends.

Serves `scan` (one target, in-process), `submit --local` (a thread pool, no broker) and the
fleet (Celery tasks call `scan_one` and, for the last target, `finalize`). Run settings
travel as a `RunPlan`: plain JSON, never a credential — contexts by name, the threshold as
its parsed document (so a worker on another host can judge without the file).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from scanfleet.aggregate import Aggregator
from scanfleet.errors import ScanError, ScanInterrupted
from scanfleet.kube import ClientCache, KubeClient
from scanfleet.results import iso, iter_summaries, run_dir, summary_path, write_json
from scanfleet.scan import ScanOptions, run_scan, utcnow
from scanfleet.targets import Target, scan_id_for
from scanfleet.thresholds import FleetThreshold, Threshold, parse_fleet_threshold, parse_threshold

log = structlog.get_logger("scanfleet.runs")


@dataclass(frozen=True)
class RunPlan:
    """Everything a worker needs to scan a target of this run. JSON-serialisable."""

    run_id: str
    source: str
    profile: str
    created_at: str
    threshold: Mapping[str, Any] | None = None
    threshold_source: str = "threshold"
    fleet_threshold: Mapping[str, Any] | None = None
    fleet_threshold_source: str = "fleet threshold"
    input_files: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()
    token_ttl: int = 3600
    timeout: float = 1800
    auditor: str = "cinc-auditor"
    dedupe_images: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_files"] = list(self.input_files)
        d["extra_args"] = list(self.extra_args)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunPlan:
        d = dict(data)
        d["input_files"] = tuple(d.get("input_files", ()))
        d["extra_args"] = tuple(d.get("extra_args", ()))
        return cls(**d)

    def scan_options(self) -> ScanOptions:
        threshold: Threshold | None = None
        if self.threshold is not None:
            threshold = parse_threshold(self.threshold, self.threshold_source)
        return ScanOptions(
            profile=self.profile,
            threshold=threshold,
            input_files=self.input_files,
            extra_args=self.extra_args,
            token_ttl=self.token_ttl,
            timeout=self.timeout,
            auditor=self.auditor,
        )

    def fleet(self) -> FleetThreshold | None:
        if self.fleet_threshold is None:
            return None
        return parse_fleet_threshold(self.fleet_threshold, self.fleet_threshold_source)


def expand_target(kube: KubeClient, target: Target) -> list[Target]:
    """A target without container → one target per regular container of the pod."""
    if target.container is not None:
        return [target]
    pod = kube.read_pod(target.namespace, target.pod)
    return [target.with_container(c.name) for c in pod.containers]


def error_summary(
    run_id: str,
    target: Target,
    error: ScanError,
    now: datetime,
    image: str | None = None,
    image_id: str | None = None,
) -> dict[str, Any]:
    """The summary of a target that failed before its scan could start."""
    return {
        "scan_id": scan_id_for(run_id, target),
        "run_id": run_id,
        "target": {**target.to_dict(), "image": image, "image_id": image_id},
        "status": "error",
        "error": {"kind": error.kind, "message": str(error)},
        "covered_by": None,
        "started_at": iso(now),
        "finished_at": iso(now),
        "duration_s": 0.0,
        "counts": None,
        "compliance": None,
        "threshold": {"passed": None, "failures": []},
        "cleanup": "complete",
        "controls": None,
    }


def resolve_targets(
    clients: ClientCache,
    plan: RunPlan,
    targets: Iterable[Target],
    out_dir: Path,
    now: Callable[[], datetime] = utcnow,
) -> list[Target]:
    """Expand pod-level targets; a pod that cannot be read gets an error summary now."""
    resolved: list[Target] = []
    for t in targets:
        try:
            resolved.extend(expand_target(clients.get(t.context), t))
        except ScanError as e:
            write_json(
                summary_path(out_dir, scan_id_for(plan.run_id, t)),
                error_summary(plan.run_id, t, e, now()),
            )
    return list(dict.fromkeys(resolved))


def scan_one(
    clients: ClientCache,
    plan: RunPlan,
    target: Target,
    results_dir: Path,
    now: Callable[[], datetime] = utcnow,
) -> dict[str, Any]:
    """Scan one resolved target of a run (the fleet task and the local pool call this)."""
    out = run_dir(results_dir, plan.run_id)
    try:
        kube = clients.get(target.context)
    except ScanError as e:
        summary = error_summary(plan.run_id, target, e, now())
        write_json(summary_path(out, summary["scan_id"]), summary)
        return summary
    return run_scan(kube, target, plan.run_id, plan.scan_options(), out, now=now)


def run_local(
    clients: ClientCache,
    plan: RunPlan,
    targets: Iterable[Target],
    results_dir: Path,
    concurrency: int = 1,
    now: Callable[[], datetime] = utcnow,
) -> dict[str, Any]:
    """Run every target in-process (threads, no broker), then finalize the run."""
    out = run_dir(results_dir, plan.run_id)
    out.mkdir(parents=True, exist_ok=True)
    resolved = resolve_targets(clients, plan, targets, out, now)
    interrupted: ScanInterrupted | None = None
    if concurrency <= 1:
        for t in resolved:
            try:
                scan_one(clients, plan, t, results_dir, now)
            except ScanInterrupted as e:
                interrupted = e
                break
    else:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            for f in [pool.submit(scan_one, clients, plan, t, results_dir, now) for t in resolved]:
                f.result()
    if interrupted is not None:
        # Targets never started still get a result: nothing ends without one.
        for t in resolved:
            p = summary_path(out, scan_id_for(plan.run_id, t))
            if not p.exists():
                write_json(p, error_summary(plan.run_id, t, interrupted, now()))
    return finalize(plan, results_dir, now)


def finalize(
    plan: RunPlan,
    results_dir: Path,
    now: Callable[[], datetime] = utcnow,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Aggregate the run's summaries (streamed from disk) and write run.json."""
    out = run_dir(results_dir, plan.run_id)
    agg = Aggregator()
    for summary in iter_summaries(out):
        agg.add(summary)
    result = agg.result(plan.fleet())
    run = {
        "run_id": plan.run_id,
        "source": plan.source,
        "profile": plan.profile,
        "created_at": plan.created_at,
        "finished_at": iso(now()),
        **result,
        **(extra or {}),
    }
    write_json(out / "run.json", run)
    log.info(
        "run.finished",
        run_id=plan.run_id,
        exit_code=run.get("exit_code"),
        targets=run.get("targets"),
    )
    return run
