"""The fleet driver of a run: store it in Redis, then publish its fan-out chunks.

`submit_run()` is the one function that both `scanfleet submit` and a sweep tick call.
The publisher is injected (`worker.app.fan_out_publisher` in production), so this module
never imports Celery; the Celery tasks then run the shared pipeline of `scanfleet.runs.pipeline`
on the workers. Must never scan or judge anything itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from scanfleet.kube.client import ClientCache
from scanfleet.runs.discovery import Entry, covers_map
from scanfleet.runs.pipeline import FinalizeHook, RunContext, maybe_finalize
from scanfleet.scan.auditor import Host
from scanfleet.scan.plan import RunPlan
from scanfleet.store.results import ResultsStore, as_results
from scanfleet.store.slots import LocalSlots
from scanfleet.store.state import RunStore

CHUNK_SIZE = 500
"""Targets per fan-out message: bounded messages, and submit never blocks on 10k publishes."""

Publish = Callable[[str, Sequence[tuple[int, int]]], None]
"""Queue fan-out chunks [start, stop) of a stored run (run id, chunks)."""


def chunks(n: int, size: int = CHUNK_SIZE) -> list[tuple[int, int]]:
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def submit_run(
    store: RunStore,
    plan: RunPlan,
    entries: Sequence[Entry],
    publish: Publish,
    *,
    results_dir: ResultsStore | Path | None,
    fallback_results_dir: ResultsStore | Path,
    created: Callable[[], None] | None = None,
    hooks: Sequence[FinalizeHook] = (),
    host: Host,
) -> int:
    """Create the run in Redis and publish its fan-out chunks; returns the number of targets.

    Raises StoreUnavailable if Redis is down (nothing is queued then). A run with no targets
    is finalized at once, here, with the finalize `hooks` the workers would run.
    """
    total = sum(e.size() for e in entries)
    results = as_results(results_dir, host.modes) if results_dir is not None else None
    store.ping()
    store.create_run(
        plan.run_id,
        plan.to_dict(),
        (e.to_dict() for e in entries),
        covers_map(plan.run_id, entries),
        total,
        created_at=plan.created_at,
        results_dir=results.location if results is not None else None,
    )
    if created is not None:
        created()  # `submit` prints the run id here: the run exists, nothing is queued yet
    if total == 0:
        pipe = RunContext(
            ClientCache(""),
            store,
            LocalSlots(1),
            results or fallback_results_dir,
            hooks=tuple(hooks),
            host=host,
        )
        maybe_finalize(pipe, plan)
        return 0
    publish(plan.run_id, chunks(len(entries)))
    return total
