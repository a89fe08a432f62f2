"""The fleet driver of a run: create it in Redis and queue it over Celery.

`submit` and sweeps both start fleet runs through here; the Celery tasks in
`scanfleet.tasks` then run the shared pipeline of `scanfleet.runs` on the workers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from scanfleet.clock import Clock, utcnow
from scanfleet.discovery import Entry, Scope, covers_map, discover
from scanfleet.discovery import dedupe_images as dedupe_by_image
from scanfleet.kube import ClientCache, choose_contexts
from scanfleet.plan import RunPlan
from scanfleet.runs import Pipeline, maybe_finalize
from scanfleet.settings import Settings, check_ttl
from scanfleet.store.runs import RunStore
from scanfleet.store.slots import LocalSlots


def enqueue_fleet_run(
    store: RunStore, plan: RunPlan, entries: Sequence[Entry], results_dir: Path | None,
    *, fallback_results_dir: Path, created: Callable[[], None] | None = None,
) -> int:
    """Create the run in Redis and queue its fan-out chunks; returns the number of targets.

    `submit` and sweeps both go through here. Raises StoreUnavailable if Redis is down
    (nothing is queued then). A run with no targets is finalized at once, here.
    """
    # The Celery app is an entry point's concern; imported late so `--local` never builds it.
    from scanfleet.celery_app import CHUNK_SIZE, FAN_OUT_TASK, QUEUE, app

    total = sum(e.size() for e in entries)
    store.ping()
    store.create_run(
        plan.run_id,
        plan.to_dict(),
        (e.to_dict() for e in entries),
        covers_map(plan.run_id, entries),
        total,
        created_at=plan.created_at,
        results_dir=str(results_dir.resolve()) if results_dir is not None else None,
    )
    if created is not None:
        created()  # `submit` prints the run id here: the run exists, nothing is queued yet
    if total == 0:
        pipe = Pipeline(ClientCache(""), store, LocalSlots(1), results_dir or fallback_results_dir)
        maybe_finalize(pipe, plan)
        return 0
    with app.producer_or_acquire() as producer:
        for start in range(0, len(entries), CHUNK_SIZE):
            app.send_task(
                FAN_OUT_TASK,
                args=[plan.run_id, start, min(start + CHUNK_SIZE, len(entries))],
                queue=QUEUE,
                producer=producer,
            )
    return total


def start_fleet_run(
    *,
    settings: Settings,
    kubeconfig: str,
    contexts: Sequence[str] = (),
    all_contexts: bool = False,
    namespaces: Sequence[str] = (),
    all_namespaces: bool = False,
    exclude_namespaces: Sequence[str] = (),
    selector: str | None = None,
    profile: str,
    input_files: Sequence[str | Path] = (),
    threshold: Path | None = None,
    fleet_threshold: Path | None = None,
    dedupe_images: bool = False,
    source: str = "submit",
    now: Clock = utcnow,
) -> str:
    """A discovery run on the fleet, as `submit` without targets makes it (sweeps use this).

    Validates (BadInput before anything is created), discovers, creates the run in Redis,
    queues it, and returns the run id once the run exists in the store.
    """
    check_ttl(settings.token_ttl, settings.scan_timeout)
    chosen = choose_contexts(kubeconfig, list(contexts), all_contexts)
    scope = Scope(chosen, tuple(namespaces), all_namespaces, tuple(exclude_namespaces), selector)
    plan = RunPlan.new(
        source=source, profile=profile, now=now(), auditor=settings.auditor,
        token_ttl=settings.token_ttl, timeout=settings.scan_timeout, threshold=threshold,
        fleet_threshold=fleet_threshold, input_files=input_files, dedupe_images=dedupe_images,
    )
    clients = ClientCache(kubeconfig)
    try:
        entries = discover(clients, scope)
    finally:
        clients.close()
    if dedupe_images:
        entries = dedupe_by_image(entries)
    store = RunStore.from_url(settings.broker_url, settings.key_prefix, settings.retention_days)
    enqueue_fleet_run(store, plan, entries, None, fallback_results_dir=settings.results_dir)
    return plan.run_id
