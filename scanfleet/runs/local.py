"""The in-process driver of a run: `scan` and `submit --local` (threads, no broker).

Run state lives in memory (`store.runs.MemoryRunState`); the per-cluster cap is a semaphore
per context (`store.slots.LocalSlots`).
Everything else is the shared pipeline of `scanfleet.runs.pipeline`, as the fleet uses it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from scanfleet.core.clock import Clock, utcnow
from scanfleet.core.errors import ScanInterrupted
from scanfleet.core.targets import Target, scan_id_for
from scanfleet.judging.documents import RunDocument
from scanfleet.kube.client import ClientCache
from scanfleet.runs.discovery import Entry, covers_map, dedupe_images, resolve
from scanfleet.runs.pipeline import (
    Progress,
    RunContext,
    complete,
    finalize,
    maybe_finalize,
    record,
    record_error,
    run_target,
)
from scanfleet.scan.auditor import Host
from scanfleet.scan.plan import RunPlan
from scanfleet.store.results import ResultsStore, as_results, read_json
from scanfleet.store.slots import LocalSlots
from scanfleet.store.state import MemoryRunState


def run_local(
    clients: ClientCache,
    plan: RunPlan,
    targets: Iterable[Target],
    results_dir: ResultsStore | Path,
    *,
    concurrency: int = 1,
    now: Clock = utcnow,
    entries: Sequence[Entry] | None = None,
    cluster_concurrency: int = 10,
    progress: Progress | None = None,
    sandbox: str | None = None,
    host: Host,
) -> RunDocument:
    """Run every target in-process (threads, no broker), then return the run summary.

    `entries` (from discovery) replace `targets` when given. The per-cluster cap is a
    semaphore per context, as the fleet's is a lease per context. `sandbox` (the mode the
    caller checked before starting, `sandbox.mode_label`) is recorded in run.json; `host`
    (`Host.from_settings`) is this process's side of every audit.
    """
    results = as_results(results_dir, host.modes)
    results.staging(plan.run_id)  # a bad location fails before anything is scanned
    if entries is None:
        entries = resolve(clients, targets, need_images=plan.dedupe_images)
    if plan.dedupe_images:
        entries = dedupe_images(entries)
    total = sum(e.size() for e in entries)
    state = MemoryRunState(total, covers_map(plan.run_id, entries), progress)
    pipe = RunContext(
        clients,
        state,
        LocalSlots(cluster_concurrency),
        results,
        now,
        sandbox=sandbox,
        host=host,
    )
    interrupted = _run_entries(pipe, plan, entries, concurrency)
    if interrupted is not None:
        _close_interrupted(pipe, plan, entries, interrupted)
    if state.run is None:  # nothing to scan, or the interruption path recorded the rest
        maybe_finalize(pipe, plan)
    if state.run is None:
        state.run = finalize(plan, results, now, sandbox=sandbox)
    return state.run


def _run_entries(
    pipe: RunContext, plan: RunPlan, entries: Sequence[Entry], concurrency: int
) -> ScanInterrupted | None:
    """Record or scan every entry (threads when concurrency > 1); stop on an interrupt."""

    def one(e: Entry) -> None:
        if e.error is not None:
            record_error(pipe, plan, e.target, e.error, image=e.image, image_id=e.image_id)
        else:
            scanned = run_target(pipe, plan, e.target)
            if scanned is not None:
                complete(pipe, plan, scanned)  # in-process, every error is recorded at once

    interrupted: ScanInterrupted | None = None
    if concurrency <= 1:
        for e in entries:
            try:
                one(e)
            except ScanInterrupted as exc:
                return exc
        return None
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(one, e) for e in entries]
        for f in futures:
            try:
                f.result()
            except ScanInterrupted as exc:
                interrupted = exc
                for other in futures:
                    other.cancel()
    return interrupted


def _close_interrupted(
    pipe: RunContext, plan: RunPlan, entries: Sequence[Entry], interrupted: ScanInterrupted
) -> None:
    """Targets never recorded still get a result: nothing ends without one. A scan cut
    short left its own summary (`complete` wrote it); the others get `interrupted`."""
    for e in entries:
        scan_id = scan_id_for(plan.run_id, e.target)
        if pipe.state.is_done(plan.run_id, scan_id):
            continue
        name = f"{scan_id}.json"
        if pipe.results.exists(plan.run_id, name):
            record(pipe, plan, read_json(pipe.results, plan.run_id, name))
        else:
            record_error(pipe, plan, e.target, interrupted, image=e.image, image_id=e.image_id)
