"""The in-process driver of a run: `scan` and `submit --local` (threads, no broker).

Run state lives in memory (`LocalState`); the per-cluster cap is a semaphore per context.
Everything else is the shared pipeline of `scanfleet.runs`, as the fleet uses it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from scanfleet.clock import Clock, utcnow
from scanfleet.discovery import Entry, dedupe_images, resolve
from scanfleet.errors import ScanInterrupted
from scanfleet.kube import ClientCache
from scanfleet.leases import LocalLeases
from scanfleet.plan import RunPlan
from scanfleet.results import run_dir, summary_path, write_json
from scanfleet.runs import (
    Pipeline,
    Progress,
    complete,
    failed_before_scan,
    finalize,
    maybe_finalize,
    record_error,
    run_target,
)
from scanfleet.targets import Target, scan_id_for


class LocalState:
    """RunState in memory, for `submit --local` and `scan`."""

    def __init__(self, entries: Sequence[Entry], progress: Progress | None = None) -> None:
        self.total = sum(e.size() for e in entries)
        self.covers: dict[str, list[dict[str, Any]]] = {}
        self.states: dict[str, str] = {}
        self.done: set[str] = set()
        self.run: dict[str, Any] | None = None
        self._finalizing = False
        self._lock = threading.Lock()
        self._progress = progress
        self._run_id: str | None = None
        self._entries = entries

    def bind(self, run_id: str) -> LocalState:
        self._run_id = run_id
        self.covers = {
            scan_id_for(run_id, e.target): [c.to_dict() for c in e.covers]
            for e in self._entries
            if e.covers
        }
        return self

    def is_done(self, run_id: str, scan_id: str) -> bool:
        with self._lock:
            return scan_id in self.done

    def mark_running(self, run_id: str, scan_id: str) -> None:
        with self._lock:
            self.states.setdefault(scan_id, "running")

    def covered(self, run_id: str, scan_id: str) -> list[dict[str, Any]]:
        return self.covers.get(scan_id, [])

    def finish(self, run_id: str, outcomes: Sequence[tuple[str, str]]) -> tuple[int, int, int]:
        with self._lock:
            added = 0
            for scan_id, status in outcomes:
                if scan_id not in self.done:
                    self.done.add(scan_id)
                    self.states[scan_id] = status
                    added += 1
            done = len(self.done)
        if added and self._progress is not None:
            self._progress(done, self.total)
        return added, done, self.total

    def begin_finalize(self, run_id: str, lock_seconds: int = 300) -> bool:
        with self._lock:
            if self._finalizing:
                return False
            self._finalizing = True
            return True

    def end_finalize(self, run_id: str, run: Mapping[str, Any]) -> None:
        self.run = dict(run)

    def is_finalized(self, run_id: str) -> bool:
        return self.run is not None


def run_local(
    clients: ClientCache,
    plan: RunPlan,
    targets: Iterable[Target],
    results_dir: Path,
    *,
    concurrency: int = 1,
    now: Clock = utcnow,
    entries: Sequence[Entry] | None = None,
    cluster_concurrency: int = 10,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run every target in-process (threads, no broker), then return the run summary.

    `entries` (from discovery) replace `targets` when given. The per-cluster cap is a
    semaphore per context, as the fleet's is a lease per context.
    """
    out = run_dir(results_dir, plan.run_id)
    out.mkdir(parents=True, exist_ok=True)
    if entries is None:
        entries = resolve(clients, targets, need_images=plan.dedupe_images)
    if plan.dedupe_images:
        entries = dedupe_images(entries)
    state = LocalState(entries, progress).bind(plan.run_id)
    pipe = Pipeline(clients, state, LocalLeases(cluster_concurrency), results_dir, now)
    interrupted: ScanInterrupted | None = None

    def one(e: Entry) -> None:
        if e.error is not None:
            record_error(pipe, plan, e)
        else:
            scanned = run_target(pipe, plan, e.target)
            if scanned is not None:
                complete(pipe, plan, scanned)  # in-process, every error is recorded at once

    if concurrency <= 1:
        for e in entries:
            try:
                one(e)
            except ScanInterrupted as exc:
                interrupted = exc
                break
    else:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            futures = [pool.submit(one, e) for e in entries]
            for f in futures:
                try:
                    f.result()
                except ScanInterrupted as exc:
                    interrupted = exc
                    for other in futures:
                        other.cancel()
    if interrupted is not None:
        _close_interrupted(pipe, plan, entries, interrupted)
    if state.run is None:  # nothing to scan, or the interruption path recorded the rest
        maybe_finalize(pipe, plan)
    if state.run is None:
        state.run = finalize(plan, results_dir, now)
    return state.run


def _close_interrupted(
    pipe: Pipeline, plan: RunPlan, entries: Sequence[Entry], interrupted: ScanInterrupted
) -> None:
    """Targets never started still get a result: nothing ends without one."""
    out = run_dir(pipe.results_dir, plan.run_id)
    for e in entries:
        for t in (e, *e.covers):
            scan_id = scan_id_for(plan.run_id, t.target)
            if pipe.state.is_done(plan.run_id, scan_id):
                continue
            p = summary_path(out, scan_id)
            if not p.exists():
                write_json(
                    p, failed_before_scan(plan.run_id, t.target, interrupted, pipe.now(),
                                  image=t.image, image_id=t.image_id)
                )
            pipe.state.finish(plan.run_id, [(scan_id, "error")])


