"""A run: many target scans with one id, judged together when the last one ends.

One pipeline, three drivers: `scan` (one target, in-process), `submit --local` (a thread
pool, no broker) and the fleet (Celery tasks). Every driver goes through the same service
functions:

    entries (resolved targets)  →  execute_target() per entry   →  record()  →  finalize
                                   (cluster slot, scan, covered      (state)     once, when
                                    summaries for --dedupe-images)               done == total

They differ only in the `RunState` (in memory, or `RunStore` in Redis) and the `Limiter`
(a semaphore per context, or Redis leases). Run settings travel as a `RunPlan`: plain JSON,
never a credential — contexts by name, the threshold as its parsed document (so a worker on
another host can judge without the file).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import structlog
import yaml

from scanfleet.aggregate import Aggregator
from scanfleet.discovery import Entry, Scope, covers_map, dedupe_images, discover, resolve
from scanfleet.discovery import dedupe_images as dedupe_by_image
from scanfleet.drift import write_sweep_drift
from scanfleet.errors import BadInput, ScanError, ScanInterrupted
from scanfleet.kube import ClientCache, KubeClient, choose_contexts
from scanfleet.leases import Limiter, LocalLeases
from scanfleet.results import iso, iter_summaries, new_run_id, run_dir, summary_path, write_json
from scanfleet.scan import ScanOptions, run_scan, utcnow
from scanfleet.settings import Settings, check_ttl
from scanfleet.store import RunStore
from scanfleet.targets import Target, scan_id_for
from scanfleet.thresholds import FleetThreshold, Threshold, parse_fleet_threshold, parse_threshold

log = structlog.get_logger("scanfleet.runs")

Clock = Callable[[], datetime]
Progress = Callable[[int, int], None]
"""Called with (done, total) after each recorded result."""


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
    error: ScanError | Mapping[str, Any],
    now: datetime,
    *,
    image: str | None = None,
    image_id: str | None = None,
) -> dict[str, Any]:
    """The summary of a target that failed before its scan could start."""
    err = (
        {"kind": error.kind, "message": str(error)}
        if isinstance(error, ScanError)
        else {"kind": str(error.get("kind")), "message": str(error.get("message"))}
    )
    return {
        "scan_id": scan_id_for(run_id, target),
        "run_id": run_id,
        "target": {**target.to_dict(), "image": image, "image_id": image_id},
        "status": "error",
        "error": err,
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


def covered_summary(summary: Mapping[str, Any], run_id: str, entry: Entry) -> dict[str, Any]:
    """--dedupe-images: the covering scan's result, with the covered target's own identity."""
    return {
        **summary,
        "scan_id": scan_id_for(run_id, entry.target),
        "target": {**entry.target.to_dict(), "image": entry.image, "image_id": entry.image_id},
        "covered_by": summary["scan_id"],
    }


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


def scan_one(
    clients: ClientCache,
    plan: RunPlan,
    target: Target,
    results_dir: Path,
    now: Clock = utcnow,
) -> dict[str, Any]:
    """Scan one resolved target of a run and write its summary (never raises ScanError)."""
    out = run_dir(results_dir, plan.run_id)
    try:
        kube = clients.get(target.context)
    except (ScanError, BadInput) as e:
        # BadInput here: the worker's kubeconfig lacks the context the submitter had.
        err = e if isinstance(e, ScanError) else {"kind": "api_error", "message": str(e)}
        summary = error_summary(plan.run_id, target, err, now())
        write_json(summary_path(out, summary["scan_id"]), summary)
        return summary
    return run_scan(kube, target, plan.run_id, plan.scan_options(), out, now=now)


def execute_target(pipe: Pipeline, plan: RunPlan, target: Target) -> dict[str, Any] | None:
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
        summary = scan_one(pipe.clients, plan, target, pipe.results_dir, pipe.now)
    record(pipe, plan, summary)
    return summary


def record_error(pipe: Pipeline, plan: RunPlan, entry: Entry) -> dict[str, Any]:
    """An entry that could not be resolved at submit time: its error is its result."""
    assert entry.error is not None
    summary = error_summary(
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
        cs = covered_summary(summary, plan.run_id, Entry.from_dict(covered))
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
) -> dict[str, Any]:
    """Last resort: an unexpected failure still gives the target a result, so the run ends."""
    error = {"kind": "api_error", "message": f"scan failed: {type(exc).__name__}: {exc}"[:500]}
    if isinstance(exc, ScanError):
        error = {"kind": exc.kind, "message": str(exc)}
    summary = error_summary(plan.run_id, target, error, pipe.now())
    write_json(summary_path(run_dir(pipe.results_dir, plan.run_id), summary["scan_id"]), summary)
    record(pipe, plan, summary)
    return summary


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
            execute_target(pipe, plan, e.target)

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
                    p, error_summary(plan.run_id, t.target, interrupted, pipe.now(),
                                  image=t.image, image_id=t.image_id)
                )
            pipe.state.finish(plan.run_id, [(scan_id, "error")])


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
    # A sweep run is compared with the previous run of the same sweep (drift.json).
    drift = write_sweep_drift(results_dir, run)
    if drift is not None:
        log.info("run.drift", run_id=plan.run_id, baseline=drift.get("run_a"))
    log.info(
        "run.finished",
        run_id=plan.run_id,
        exit_code=run.get("exit_code"),
        targets=run.get("targets"),
    )
    return run


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
        pipe = Pipeline(ClientCache(""), store, LocalLeases(1), results_dir or fallback_results_dir)
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


def _threshold_doc(path: Path | None, fleet: bool) -> dict[str, Any] | None:
    """Load and strictly validate a threshold file; the run carries the document."""
    if path is None:
        return None
    from scanfleet.thresholds import load_fleet_threshold, load_threshold

    (load_fleet_threshold if fleet else load_threshold)(path)  # raises ThresholdFileError
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict):
        raise BadInput(f"threshold file {str(path)!r} must be a mapping")
    return doc


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
    for f in input_files:
        if not Path(f).is_file():
            raise BadInput(f"input file {str(f)!r} does not exist or is not a file")
    t = now()
    plan = RunPlan(
        run_id=new_run_id(t),
        source=source,
        profile=profile,
        created_at=iso(t),
        threshold=_threshold_doc(threshold, fleet=False),
        threshold_source=str(threshold) if threshold else "threshold",
        fleet_threshold=_threshold_doc(fleet_threshold, fleet=True),
        fleet_threshold_source=str(fleet_threshold) if fleet_threshold else "fleet threshold",
        input_files=tuple(str(Path(f).resolve()) for f in input_files),
        token_ttl=settings.token_ttl,
        timeout=settings.scan_timeout,
        auditor=settings.auditor,
        dedupe_images=dedupe_images,
    )
    plan.scan_options()
    plan.fleet()
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
