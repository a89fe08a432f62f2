"""A run: many target scans with one id, judged together when the last one ends.

One pipeline, three drivers: `scan` (one target, in-process), `submit --local` (a thread
pool, no broker) and the fleet (Celery tasks). Every driver goes through the same service
functions:

    entries (resolved targets)  →  execute_target() per entry   →  record()  →  finalize
                                   (cluster slot, scan, covered      (state)     once, when
                                    summaries for --dedupe-images)               done == total

They differ only in the `RunState` (in memory, or `RunStore` in Redis) and the `Limiter`
(a semaphore per context, or Redis leases): `scanfleet.local` drives a run in-process,
`scanfleet.fleet` creates and queues one for the Celery tasks of `scanfleet.tasks`. Run
settings travel as a `RunPlan`: plain JSON, never a credential — contexts by name, the
threshold as its parsed document (so a worker on another host can judge without it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import structlog

from scanfleet.aggregate import Aggregator
from scanfleet.clock import Clock, iso, utcnow
from scanfleet.discovery import Entry
from scanfleet.drift import write_sweep_drift
from scanfleet.errors import BadInput, ErrorKind, ScanError
from scanfleet.kube import ClientCache
from scanfleet.leases import Limiter
from scanfleet.plan import RunPlan
from scanfleet.results import iter_summaries, run_dir, summary_path, write_json
from scanfleet.scan import run_scan
from scanfleet.summaries import (
    TargetSummary,
    covered_summary,
    error_summary,
    target_doc,
)
from scanfleet.targets import Target, scan_id_for

log = structlog.get_logger("scanfleet.runs")

Progress = Callable[[int, int], None]
"""Called with (done, total) after each recorded result."""


def failed_before_scan(
    run_id: str,
    target: Target,
    error: ScanError | Mapping[str, Any],
    now: datetime,
    *,
    image: str | None = None,
    image_id: str | None = None,
) -> TargetSummary:
    """The summary of a target that failed before its scan could start."""
    return error_summary(
        scan_id=scan_id_for(run_id, target), run_id=run_id,
        target=target_doc(target.to_dict(), image, image_id), error=error, started_at=iso(now),
    )


class RunState(Protocol):
    """Where a run's progress lives: `LocalState` in memory, `store.RunStore` in Redis."""

    def is_done(self, run_id: str, scan_id: str) -> bool: ...

    def mark_running(self, run_id: str, scan_id: str) -> None: ...

    def covered(self, run_id: str, scan_id: str) -> list[dict[str, Any]]: ...

    def finish(
        self, run_id: str, outcomes: Sequence[tuple[str, str]]
    ) -> tuple[int, int, int]: ...

    def begin_finalize(self, run_id: str, lock_seconds: int = 300) -> bool: ...

    def end_finalize(self, run_id: str, run: Mapping[str, Any]) -> None: ...

    def is_finalized(self, run_id: str) -> bool: ...


@dataclass
class Pipeline:
    """What executing a target needs besides the plan and the target."""

    clients: ClientCache
    state: RunState
    limiter: Limiter
    results_dir: Path
    now: Clock = utcnow
    defer_unavailable: bool = False
    """Let ClusterUnavailable propagate (the fleet retries it) instead of recording it."""


def scan_one(
    clients: ClientCache,
    plan: RunPlan,
    target: Target,
    results_dir: Path,
    now: Clock = utcnow,
    defer_unavailable: bool = False,
) -> TargetSummary:
    """Scan one resolved target of a run and write its summary.

    Never raises ScanError, except ClusterUnavailable when `defer_unavailable` is set.
    """
    out = run_dir(results_dir, plan.run_id)
    try:
        kube = clients.get(target.context)
    except (ScanError, BadInput) as e:
        # BadInput here: the worker's kubeconfig lacks the context the submitter had.
        err = e if isinstance(e, ScanError) else {"kind": ErrorKind.API_ERROR, "message": str(e)}
        summary = failed_before_scan(plan.run_id, target, err, now())
        write_json(summary_path(out, summary["scan_id"]), summary)
        return summary
    options = replace(plan.scan_options, defer_unavailable=defer_unavailable)
    return run_scan(kube, target, plan.run_id, options, out, now=now)


def execute_target(pipe: Pipeline, plan: RunPlan, target: Target) -> TargetSummary | None:
    """The service every driver calls for one target: slot → scan → record → maybe finalize.

    Idempotent under redelivery: a target already recorded is not scanned again (None is
    returned, and the run is finalized if that had not happened yet). Raises
    `leases.NoSlot` when its cluster is at the cap (the caller retries later) and
    `ScanInterrupted` after the interrupted scan's summary is written.
    """
    scan_id = scan_id_for(plan.run_id, target)
    if pipe.state.is_done(plan.run_id, scan_id):
        log.info("scan.already_done", run_id=plan.run_id, scan_id=scan_id)
        maybe_finalize(pipe, plan)
        return None
    with pipe.limiter.slot(target.context, scan_id):
        pipe.state.mark_running(plan.run_id, scan_id)
        summary = scan_one(pipe.clients, plan, target, pipe.results_dir, pipe.now,
                           pipe.defer_unavailable)
    record(pipe, plan, summary)
    return summary


def record_error(pipe: Pipeline, plan: RunPlan, entry: Entry) -> TargetSummary:
    """An entry that could not be resolved at submit time: its error is its result."""
    assert entry.error is not None
    summary = failed_before_scan(
        plan.run_id, entry.target, entry.error, pipe.now(), image=entry.image,
        image_id=entry.image_id,
    )
    write_json(summary_path(run_dir(pipe.results_dir, plan.run_id), summary["scan_id"]), summary)
    record(pipe, plan, summary)
    return summary


def record(pipe: Pipeline, plan: RunPlan, summary: Mapping[str, Any]) -> None:
    """Write covered summaries, count the results, finalize if this was the last one."""
    out = run_dir(pipe.results_dir, plan.run_id)
    outcomes = [(str(summary["scan_id"]), str(summary["status"]))]
    for covered in pipe.state.covered(plan.run_id, str(summary["scan_id"])):
        e = Entry.from_dict(covered)
        cs = covered_summary(
            summary, scan_id_for(plan.run_id, e.target),
            target_doc(e.target.to_dict(), e.image, e.image_id),
        )
        write_json(summary_path(out, cs["scan_id"]), cs)
        outcomes.append((cs["scan_id"], cs["status"]))
    _added, done, total = pipe.state.finish(plan.run_id, outcomes)
    if done >= total:
        maybe_finalize(pipe, plan)


def maybe_finalize(pipe: Pipeline, plan: RunPlan) -> dict[str, Any] | None:
    """Aggregate the run if every target is recorded and nobody else has (SET NX lock)."""
    if pipe.state.is_finalized(plan.run_id):
        return None
    _added, done, total = pipe.state.finish(plan.run_id, [])
    if done < total or not pipe.state.begin_finalize(plan.run_id):
        return None
    run = finalize(plan, pipe.results_dir, pipe.now)
    pipe.state.end_finalize(plan.run_id, run)
    return run


def fan_out(
    pipe: Pipeline,
    plan: RunPlan,
    entries: Iterable[Entry],
    enqueue: Callable[[Target], None],
) -> int:
    """One chunk of a fleet run: queue a scan per entry; record unresolvable ones at once.

    Returns how many scans were queued. Safe to repeat: a repeated chunk queues scans whose
    redelivered copies find their target done (or leased) and record nothing twice.
    """
    queued = 0
    for e in entries:
        if e.error is not None:
            if not pipe.state.is_done(plan.run_id, scan_id_for(plan.run_id, e.target)):
                record_error(pipe, plan, e)
        else:
            enqueue(e.target)
            queued += 1
    return queued


def record_failure(
    pipe: Pipeline, plan: RunPlan, target: Target, exc: BaseException
) -> TargetSummary:
    """Last resort: an unexpected failure still gives the target a result, so the run ends."""
    error: ScanError | dict[str, str] = {
        "kind": ErrorKind.API_ERROR, "message": f"scan failed: {type(exc).__name__}: {exc}"[:500]
    }
    if isinstance(exc, ScanError):
        error = exc
    summary = failed_before_scan(plan.run_id, target, error, pipe.now())
    write_json(summary_path(run_dir(pipe.results_dir, plan.run_id), summary["scan_id"]), summary)
    record(pipe, plan, summary)
    return summary


def finalize(
    plan: RunPlan,
    results_dir: Path,
    now: Clock = utcnow,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Aggregate the run's summaries (streamed from disk) and write run.json."""
    out = run_dir(results_dir, plan.run_id)
    agg = Aggregator()
    for summary in iter_summaries(out):
        agg.add(summary)
    result = agg.result(plan.fleet)
    run = {
        "run_id": plan.run_id,
        "source": plan.source,
        "profile": plan.profile,
        "created_at": plan.created_at,
        "finished_at": iso(now()),
        **result,
        **(extra or {}),
    }
    # A sweep run is compared with the previous run of the same sweep (drift.json), before
    # run.json appears: a reader that sees run.json finds every artefact of the run.
    drift = write_sweep_drift(results_dir, run)
    if drift is not None:
        log.info("run.drift", run_id=plan.run_id, baseline=drift.get("run_a"))
    write_json(out / "run.json", run)
    log.info(
        "run.finished",
        run_id=plan.run_id,
        exit_code=run.get("exit_code"),
        targets=run.get("targets"),
    )
    return run
