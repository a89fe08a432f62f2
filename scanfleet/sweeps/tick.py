"""One tick of a sweep, and the drift a sweep run leaves behind (SPEC §7).

A tick takes the sweep's lock (`store.locks.SweepLock`): a sweep whose previous run has not
finished is skipped and logged (`sweep.skipped`), never started twice — even when two beat
processes send the same tick. Otherwise it starts an ordinary fleet run with
`source: "sweep:<name>"` through `submit.submit_run`, exactly as `submit` does, and binds
the lock to the new run id. `write_drift` is the finalize hook that puts `drift.json` next
to a sweep run's run.json (runs.finalize calls it and knows nothing about sweeps);
`finalize_hooks(plan)` adds `upload_to_heimdall` for a sweep with `upload:` (the URL rides in
the plan's `extra`, the key in the worker's environment), which never fails the run.

Called by the worker's tasks and the schedule, never the other way round: the Celery
publisher is injected, and so is the starter (`run_tick(start=...)`; the worker's app
takes one in `create_app(start_sweep=...)`). Never carries a credential: sweeps name
contexts, never tokens.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

from scanfleet.core.clock import utcnow
from scanfleet.core.errors import BadInput
from scanfleet.core.settings import Settings, check_ttl, heimdall_api_key
from scanfleet.kube.client import ClientCache
from scanfleet.kube.kubeconfig import choose_contexts
from scanfleet.reports.hdf import export as export_hdf
from scanfleet.reports.heimdall import HeimdallServer, upload_files
from scanfleet.runs.discovery import Scope, dedupe_images, discover
from scanfleet.runs.drift import write_sweep_drift
from scanfleet.runs.fleet import Publish, submit_run
from scanfleet.runs.pipeline import FinalizeHook
from scanfleet.scan.auditor import Host
from scanfleet.scan.plan import RunPlan
from scanfleet.store.locks import LOCK_TTL, SweepLock
from scanfleet.store.results import ResultsStore, iter_summaries, open_results
from scanfleet.store.state import RunStore
from scanfleet.sweeps.spec import Sweep

log = structlog.get_logger(__name__)

Starter = Callable[[Sweep, Settings], str]
"""Start an ordinary run for a sweep (source "sweep:<name>"); returns the run id."""


def run_tick(
    sweep: Sweep, lock: SweepLock, start: Starter, settings: Settings, *, lock_ttl: int = LOCK_TTL
) -> str | None:
    """One tick of a sweep: the new run's id, or None when skipped."""
    with structlog.contextvars.bound_contextvars(sweep=sweep.name):
        token, holder = lock.try_acquire(sweep.name)
        if token is None:
            log.warning(
                "sweep.skipped",
                sweep=sweep.name,
                reason="the previous run of this sweep has not finished",
                running=holder,
            )
            return None
        try:
            run_id = start(sweep, settings)
        except BaseException:
            lock.release(sweep.name, token)
            raise
        lock.bind(sweep.name, token, run_id, lock_ttl)
        log.info("sweep.started", sweep=sweep.name, run_id=run_id, source=sweep.source)
        return run_id


def start_sweep_run(sweep: Sweep, settings: Settings, publish: Publish) -> str:
    """Validate, discover, store and publish a sweep's run; its id once it is stored.

    BadInput before anything is created; StoreUnavailable if Redis is down.
    """
    check_ttl(settings.token_ttl, settings.scan_timeout)
    kubeconfig = settings.kubeconfig
    chosen = choose_contexts(kubeconfig, list(sweep.contexts), sweep.all_contexts)
    scope = Scope(
        chosen,
        tuple(sweep.namespaces),
        sweep.all_namespaces,
        tuple(sweep.exclude_namespaces),
        sweep.selector,
    )
    plan = RunPlan.new(
        source=sweep.source,
        profile=sweep.profile,
        now=utcnow(),
        auditor=settings.auditor,
        token_ttl=settings.token_ttl,
        timeout=settings.scan_timeout,
        threshold=Path(sweep.threshold) if sweep.threshold else None,
        fleet_threshold=Path(sweep.fleet_threshold) if sweep.fleet_threshold else None,
        input_files=sweep.inputs,
        dedupe_images=sweep.dedupe_images,
        allowed_profiles=settings.allowed_profiles,
    )
    plan = with_upload(plan, sweep)
    clients = ClientCache(kubeconfig)
    try:
        entries = discover(clients, scope)
    finally:
        clients.close()
    if sweep.dedupe_images:
        entries = dedupe_images(entries)
    store = RunStore.from_url(settings.broker_url, settings.key_prefix, settings.retention_days)
    submit_run(
        store,
        plan,
        entries,
        publish,
        results_dir=None,
        fallback_results_dir=open_results(None, settings),
        hooks=finalize_hooks(plan),
        host=Host.from_settings(settings),
    )
    return plan.run_id


def with_upload(plan: RunPlan, sweep: Sweep) -> RunPlan:
    """The plan, carrying the sweep's Heimdall URL (never a key) to the finalizing worker."""
    if sweep.upload is None:
        return plan
    return dataclasses.replace(plan, extra={**plan.extra, "upload": {"heimdall_url": sweep.upload}})


def finalize_hooks(plan: RunPlan) -> tuple[FinalizeHook, ...]:
    """What a worker runs when it finalizes `plan`'s run: drift, and the sweep's upload."""
    upload = plan.extra.get("upload") if isinstance(plan.extra, Mapping) else None
    url = upload.get("heimdall_url") if isinstance(upload, Mapping) else None
    if not isinstance(url, str) or not url:
        return (write_drift,)
    return (write_drift, functools.partial(upload_to_heimdall, url))


def upload_to_heimdall(url: str, results: ResultsStore, run: Mapping[str, Any]) -> None:
    """Finalize hook: each target's HDF file to Heimdall. Logs what happened; never raises,
    so an unreachable server or a missing key never changes the run's verdict."""
    run_id = str(run.get("run_id"))
    source = str(run.get("source") or "")
    sweep = source.removeprefix("sweep:") if source.startswith("sweep:") else None
    try:
        key = heimdall_api_key()
    except BadInput as e:
        log.warning("heimdall.upload_skipped", run_id=run_id, reason=str(e))
        return
    if key is None:
        log.warning(
            "heimdall.upload_skipped",
            run_id=run_id,
            reason="no SCANFLEET_HEIMDALL_API_KEY or SCANFLEET_HEIMDALL_API_KEY_FILE",
        )
        return
    server = HeimdallServer(url, key)
    try:
        files = export_hdf(
            run,
            lambda: iter_summaries(results, run_id),
            lambda sid: results.read_bytes(run_id, f"{sid}.report.json"),
        )
        result = upload_files(server, files, run_id, sweep)
    except Exception as e:  # an upload must never fail the run
        log.warning("heimdall.upload_failed", run_id=run_id, error=server.scrub(str(e)))
        return
    log.info(
        "heimdall.uploaded",
        run_id=run_id,
        url=url,
        uploaded=len(result.uploaded),
        failed=[f"{name}: {why}" for name, why in result.failed[:20]],
    )


def write_drift(results_dir: ResultsStore | Path, run: Mapping[str, Any]) -> None:
    """Finalize hook: a sweep run is compared with the previous run of the same sweep."""
    drift = write_sweep_drift(results_dir, run)
    if drift is not None:
        log.info("run.drift", run_id=run.get("run_id"), baseline=drift.get("run_a"))
