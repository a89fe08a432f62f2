"""A run: many target scans with one id, judged together when the last one ends.

One pipeline, three drivers: `scan` (one target, in-process), `submit --local` (a thread
pool, no broker) and the fleet (Celery tasks). Every driver goes through the same service
functions:

    entries (resolved targets) → run_target() per entry → complete() → record() → finalize
                                 (cluster slot, then      (or the      (state,    once, when
                                  scan.scan_target)        driver      covered    done == total
                                                           retries)    targets)

They differ only in the `RunState` (in memory, or `RunStore` in Redis) and the `Slots`
(a semaphore per context, or Redis leases): `scanfleet.runs.local` drives a run in-process,
`scanfleet.runs.fleet` stores and publishes one for the tasks of `scanfleet.worker`. Run
settings travel as a `RunPlan`: plain JSON, never a credential — contexts by name, the
threshold as its parsed document (so a worker on another host can judge without it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, cast

import structlog

from scanfleet.core import metrics
from scanfleet.core.clock import Clock, iso, utcnow
from scanfleet.core.errors import (
    ErrorKind,
    ExitCode,
    ProfileMismatch,
    ResultsUnavailable,
    ResultsUnwritable,
    ScanError,
    ScanInterrupted,
)
from scanfleet.core.logs import redact_text
from scanfleet.core.targets import Target, scan_id_for
from scanfleet.judging.aggregate import Aggregator
from scanfleet.judging.documents import (
    RunDocument,
    TargetSummary,
    covered_summary,
    error_summary,
    target_doc,
)
from scanfleet.kube.client import ClientCache
from scanfleet.runs.discovery import Entry
from scanfleet.scan.auditor import Host
from scanfleet.scan.plan import RunPlan
from scanfleet.scan.target import Scanned, scan_target
from scanfleet.store.files import PRIVATE, Modes
from scanfleet.store.results import RUN_FILE, ResultsStore, as_results, iter_summaries
from scanfleet.store.slots import Slots

log = structlog.get_logger(__name__)

FinalizeHook = Callable[[ResultsStore, Mapping[str, Any]], None]
"""Runs once per run, after aggregation and before run.json is written (e.g. drift), with
the results store (a directory's store carries the results' file modes) and run.json's
body."""
Progress = Callable[[int, int], None]
"""Called with (done, total) after each recorded result."""


def error_result(
    run_id: str,
    target: Target,
    error: BaseException | Mapping[str, Any],
    now: datetime,
    *,
    image: str | None = None,
    image_id: str | None = None,
    profile_sha256: str | None = None,
) -> TargetSummary:
    """The error summary of a target that has no scan result (builds it; `record_error`
    records it). An exception that is not a `ScanError` becomes an `api_error`."""
    if isinstance(error, BaseException) and not isinstance(error, ScanError):
        error = {
            "kind": ErrorKind.API_ERROR,
            "message": f"scan failed: {type(error).__name__}: {error}"[:500],
        }
    summary = error_summary(
        scan_id=scan_id_for(run_id, target),
        run_id=run_id,
        target=target_doc(target.to_dict(), image, image_id),
        error=error,
        started_at=iso(now),
        profile_sha256=profile_sha256,
    )
    # Messages go to result files and Redis: no credential, whatever raised them.
    if summary["error"] is not None:
        summary["error"]["message"] = redact_text(summary["error"]["message"])
    return summary


class RunState(Protocol):
    """Where a run's progress lives: `store.runs.MemoryRunState` or `store.runs.RunStore`."""

    def is_done(self, run_id: str, scan_id: str) -> bool: ...

    def mark_running(self, run_id: str, scan_id: str) -> None: ...

    def covered(self, run_id: str, scan_id: str) -> list[dict[str, Any]]: ...

    def finish(self, run_id: str, outcomes: Sequence[tuple[str, str]]) -> tuple[int, int, int]: ...

    def begin_finalize(self, run_id: str, lock_seconds: int = 300) -> bool: ...

    def end_finalize(self, run_id: str, run: RunDocument) -> None: ...

    def is_finalized(self, run_id: str) -> bool: ...


@dataclass
class RunContext:
    """What running a target needs besides the plan and the target."""

    clients: ClientCache
    state: RunState
    slots: Slots
    results_dir: ResultsStore | Path
    """Where results go (`store.results`); a Path is a results directory."""
    now: Clock = utcnow
    hooks: tuple[FinalizeHook, ...] = ()
    """Called with (results store, run.json body) before run.json is written."""
    sandbox: str | None = None
    """The auditor sandbox mode of this driver ("landlock-abi-N", "off"): run.json's
    `sandbox` when this driver finalizes the run."""
    host: Host = field(kw_only=True)
    """This process's side of every audit and write: sandbox settings, environment, the
    results' file modes, the stop event (`Host.from_settings`)."""
    results: ResultsStore = field(init=False)

    def __post_init__(self) -> None:
        self.results = as_results(self.results_dir, self.host.modes)


def run_target(pipe: RunContext, plan: RunPlan, target: Target) -> Scanned | None:
    """Take the target's cluster slot and scan it; the driver then calls `complete`.

    Returns None for a target already recorded (redelivery), after finalizing the run if
    that had not happened yet. Raises `NoSlot`/`SlotBusy` when the cluster is at its cap or
    this scan runs elsewhere (or ran too long without its lease, which recovery then
    re-ran), and `StoreUnavailable`: all retryable, nothing recorded.
    """
    scan_id = scan_id_for(plan.run_id, target)
    if pipe.state.is_done(plan.run_id, scan_id):
        log.info("scan.already_done", run_id=plan.run_id, scan_id=scan_id)
        maybe_finalize(pipe, plan)
        return None
    rerun = {"run_id": plan.run_id, "target": target.to_dict()}  # recovery.py re-runs it
    with pipe.slots.slot(target.context, scan_id, rerun):
        pipe.state.mark_running(plan.run_id, scan_id)
        staging = pipe.results.staging(plan.run_id)
        scanned = scan_target(
            pipe.clients,
            target,
            plan.run_id,
            plan.scan_options,
            staging,
            now=pipe.now,
            host=pipe.host,
        )
        return publish_report(pipe.results, plan.run_id, scanned, staging)


def publish_report(results: ResultsStore, run_id: str, scanned: Scanned, staging: Path) -> Scanned:
    """Put the scan's report in the results (an upload for an object store); a refused
    upload makes a completed scan's result a `results_unwritable` error."""
    name = f"{scanned.summary['scan_id']}.report.json"
    staged = staging / name
    if not staged.exists():
        return scanned
    try:
        results.publish(run_id, name, staged)
    except ResultsUnwritable as e:
        log.error("results.unwritable", kind=e.kind, error=str(e))
        if scanned.error is not None:
            return scanned
        s = scanned.summary
        summary = error_summary(
            scan_id=s["scan_id"],
            run_id=run_id,
            target=s["target"],
            error=e,
            started_at=s["started_at"],
            finished_at=s["finished_at"],
            duration_s=s["duration_s"],
            cleanup=s["cleanup"],
            profile_sha256=s["profile_sha256"],
        )
        return Scanned(summary, e)
    return scanned


def _write_summary(
    pipe: RunContext, run_id: str, summary: Mapping[str, Any]
) -> ResultsUnwritable | None:
    """Write a target summary; a refused write is logged and returned, never raised: the
    target is still counted (as an error), so the run ends."""
    try:
        pipe.results.write_json(run_id, f"{summary['scan_id']}.json", summary)
    except ResultsUnwritable as e:
        log.error("results.unwritable", kind=e.kind, scan_id=summary["scan_id"], error=str(e))
        return e
    return None


def complete(pipe: RunContext, plan: RunPlan, scanned: Scanned) -> TargetSummary:
    """Write a scan's summary and record it — unless it was interrupted.

    An interrupted scan's summary is written but not recorded, and `ScanInterrupted` is
    raised so the driver stops (the fleet's message is redelivered; `scan` and
    `submit --local` record every unfinished target as interrupted).
    """
    summary = scanned.summary
    if isinstance(scanned.error, ScanInterrupted):
        _write_summary(pipe, plan.run_id, summary)
        raise scanned.error
    record(pipe, plan, summary)
    return summary


def record_error(
    pipe: RunContext,
    plan: RunPlan,
    target: Target,
    error: BaseException | Mapping[str, Any],
    *,
    image: str | None = None,
    image_id: str | None = None,
) -> TargetSummary:
    """The one route by which a target gets an error result without a scan of its own:
    an entry unresolvable at submit time, a plan or profile the worker refuses, an
    unexpected failure, a run interrupted before the target started. Recorded through
    `record` (covered targets, counts, finalize) unless the target already has a result;
    returns the error summary either way.

    A `ProfileMismatch` carries the run's pinned digest: the summary names that one.
    """
    sha256 = plan.profile_sha256
    if isinstance(error, ProfileMismatch) and error.pinned:
        sha256 = error.pinned  # the run's digest, not this worker's
    summary = error_result(
        plan.run_id,
        target,
        error,
        pipe.now(),
        image=image,
        image_id=image_id,
        profile_sha256=sha256,
    )
    if not pipe.state.is_done(plan.run_id, summary["scan_id"]):
        record(pipe, plan, summary)
    return summary


def record(pipe: RunContext, plan: RunPlan, summary: TargetSummary) -> None:
    """Write the summary and its covered ones, count them, finalize after the last one."""
    refused = _write_summary(pipe, plan.run_id, summary)
    status = "error" if refused is not None else str(summary["status"])
    outcomes = [(str(summary["scan_id"]), status)]
    for covered in pipe.state.covered(plan.run_id, str(summary["scan_id"])):
        e = Entry.from_dict(covered)
        cs = covered_summary(
            summary,
            scan_id_for(plan.run_id, e.target),
            target_doc(e.target.to_dict(), e.image, e.image_id),
        )
        refused = _write_summary(pipe, plan.run_id, cs)
        outcomes.append((cs["scan_id"], "error" if refused is not None else cs["status"]))
    added, done, total = pipe.state.finish(plan.run_id, outcomes)
    metrics.scan_recorded(summary, added)
    if done >= total:
        maybe_finalize(pipe, plan)


def maybe_finalize(pipe: RunContext, plan: RunPlan) -> RunDocument | None:
    """Aggregate the run if every target is recorded and nobody else has (SET NX lock)."""
    if pipe.state.is_finalized(plan.run_id):
        return None
    _added, done, total = pipe.state.finish(plan.run_id, [])
    if done < total or not pipe.state.begin_finalize(plan.run_id):
        return None
    run = finalize(plan, pipe.results, pipe.now, pipe.hooks, sandbox=pipe.sandbox, expected=total)
    pipe.state.end_finalize(plan.run_id, run)
    return run


def fan_out(
    pipe: RunContext,
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
            record_error(pipe, plan, e.target, e.error, image=e.image, image_id=e.image_id)
        else:
            enqueue(e.target)
            queued += 1
    return queued


def finalize(
    plan: RunPlan,
    results_dir: ResultsStore | Path,
    now: Clock = utcnow,
    hooks: Sequence[FinalizeHook] = (),
    *,
    sandbox: str | None = None,
    expected: int | None = None,
    modes: Modes = PRIVATE,
) -> RunDocument:
    """Aggregate the run's summaries (streamed from the results), run the hooks, write
    run.json.

    `sandbox` is the auditor sandbox mode the run's scans ran in (`sandbox.mode_label`).
    `modes` are the file modes of a results directory passed as a Path (a store carries
    its own). `expected` is the run's number of targets: fewer summaries than that (a results store
    that refused writes) make the run an error, `error.kind` `results_unwritable`, exit 3.
    A run.json the store refuses is logged; the returned run (kept in Redis) says so.

    The hooks run before run.json appears (sweeping writes drift.json there), so a reader
    that sees run.json finds every artefact of the run.
    """
    results = as_results(results_dir, modes)
    agg = Aggregator()
    unreadable: str | None = None
    try:
        for summary in iter_summaries(results, plan.run_id):
            agg.add(summary)
    except ResultsUnavailable as e:  # the run still ends, with what could be read
        log.error("results.unavailable", run_id=plan.run_id, error=str(e))
        unreadable = str(e)
    result = agg.result(plan.fleet)
    run = cast(
        RunDocument,
        {
            "run_id": plan.run_id,
            "source": plan.source,
            "profile": plan.profile,
            "created_at": plan.created_at,
            "finished_at": iso(now()),
            "sandbox": sandbox,
            "threshold_applied": plan.threshold is not None,
            **result,
            "profile_sha256": plan.profile_sha256,
        },
    )
    targets = cast(dict[str, Any], run.get("targets") or {})
    found = int(targets.get("total") or 0)
    if expected is not None and found < expected:
        # Results the store refused (or cannot give back) count as errors, not as nothing.
        targets["error"] = int(targets.get("error") or 0) + expected - found
        targets["total"] = expected
        _unwritable_run(
            run,
            f"{expected - found} of {expected} target results are missing from "
            f"{results.location}: " + (unreadable or "writes refused"),
        )
    if not targets.get("total"):  # only a sweep starts a run that found nothing
        run["note"] = "no running pods matched: the run had no targets"
    try:
        for hook in hooks:
            hook(results, run)
        results.write_json(plan.run_id, RUN_FILE, run)
    except (ResultsUnwritable, ResultsUnavailable) as e:
        log.error("results.unwritable", kind=e.kind, run_id=plan.run_id, error=str(e))
        _unwritable_run(run, str(e))
    log.info(
        "run.finished",
        run_id=plan.run_id,
        exit_code=run.get("exit_code"),
        targets=run.get("targets"),
    )
    return run


def _unwritable_run(run: RunDocument, message: str) -> None:
    run["error"] = {"kind": ErrorKind.RESULTS_UNWRITABLE.value, "message": message[:500]}
    if int(run.get("exit_code") or 0) == ExitCode.OK:  # a failed threshold stays exit 1 (SPEC §5)
        run["exit_code"] = int(ExitCode.SCAN_ERROR)
