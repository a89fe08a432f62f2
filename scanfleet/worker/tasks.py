"""Every Celery task, registered one way (`_task`): decode, bind log context, call one service.

    scanfleet.fan_out(run_id, start, stop)
        read target entries [start, stop) of the run from Redis, queue one scan_target each
        (entries that could not be resolved at submit time are recorded as errors here)
    scanfleet.scan_target(run_id, target, attempts)
        target = {context, namespace, pod, container}: runs.run_target then runs.complete,
        the services `submit --local` runs too

Messages carry a run id and context/namespace/pod/container names: never a credential or
kubeconfig content. The run plan is read from Redis by run id. Retries are decided here,
from the error alone (`retryable`, and its row of `clock.RETRY_DELAYS`): a cluster at its
cap or this scan leased elsewhere (`NoSlot`, `SlotBusy`), Redis unreachable
(`StoreUnavailable`), a cluster unreachable (`ClusterUnavailable`, a few times, then it is
recorded). Anything else still gives the target an error result, so one bad target never
stalls the run.

A plan read from Redis is not trusted (`worker_plan`, policy.py): the auditor comes from
this worker's settings, and a results directory outside SCANFLEET_RESULTS_DIR, a profile
off the allow-list, a refused auditor argument or a bad token TTL gives every target a
`rejected` error result instead of a scan. A URL profile is fetched by the worker, never by
the auditor, and pinned to the run's first fetch (`_Runtime.pin_profile`, profiles.py):
other bytes, or no bytes, give the target an error result and no auditor runs.

    scanfleet.sweep_tick(name, sweep)   sweeping.run_tick, starting runs via submit.submit_run

Every worker's main process also runs recovery.py's watcher (every lease/2): a scan whose
lease expired without a result is revoked and published again here, long before Redis
would redeliver the dead worker's message.
    scanfleet.identity.janitor / scanfleet.prune  janitor and retention, on beat's schedule
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import timedelta
from typing import Any, TypeVar, cast

import structlog
from celery.exceptions import Retry
from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutdown

from scanfleet.core.clock import backoff, retry_delay, utcnow
from scanfleet.core.errors import (
    BadInput,
    FleetBusy,
    ProfileMismatch,
    ProfileUnavailable,
    Rejected,
    SandboxUnavailable,
    ScanError,
    ScanfleetError,
    ScanInterrupted,
    StoreUnavailable,
)
from scanfleet.core.policy import check_auditor_args, check_profile, credentialed
from scanfleet.core.settings import check_ttl, process_environment
from scanfleet.core.targets import Target, scan_id_for
from scanfleet.identity.janitor import EarlyRevoke, janitor_for_kubeconfig
from scanfleet.kube.client import ClientCache
from scanfleet.profiles.fetch import RunPins, fetch_config, pin_for_scan
from scanfleet.runs.discovery import Entry
from scanfleet.runs.pipeline import RunContext, complete, fan_out, record_failure, run_target
from scanfleet.runs.recovery import Watcher, recover_expired
from scanfleet.runs.retention import prune
from scanfleet.sandbox import policy as sandbox
from scanfleet.scan.plan import RunPlan
from scanfleet.store.locks import LOCK_TTL, SweepLock
from scanfleet.store.pins import record_profile_digest
from scanfleet.store.results import ResultsStore, check_results_location, open_results
from scanfleet.store.slots import RedisSlots
from scanfleet.store.state import RunStore
from scanfleet.sweeps import posture
from scanfleet.sweeps import tick as sweeping
from scanfleet.sweeps.spec import Sweep
from scanfleet.worker.app import (
    FAN_OUT_TASK,
    JANITOR_TASK,
    PRUNE_TASK,
    QUEUE,
    SCAN_TASK,
    SWEEP_TICK_TASK,
    app,
    fan_out_publisher,
    settings,
    tuning,
)

log = structlog.get_logger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


class _Runtime:
    """Per worker process: one Redis client, one Kubernetes client per context, plans."""

    def __init__(self) -> None:
        self.store = RunStore.from_url(
            settings.broker_url, settings.key_prefix, settings.retention_days
        )
        self.clients = ClientCache(settings.kubeconfig, retries=settings.kube_retries)
        self.slots = RedisSlots(
            self.store, settings.cluster_concurrency, lease_seconds=tuning.lease_seconds
        )
        self._plans: dict[str, tuple[RunPlan, ResultsStore, Rejected | None]] = {}
        self.sandbox = _sandbox_mode()
        self.pins = RunPins(fetch_config(settings, process_environment()))

    def pin_profile(self, plan: RunPlan) -> RunPlan:
        """A URL profile as this worker's cached archive, pinned to the run's sha256 (the
        first fetch of the run records it in Redis): profiles.pin_for_scan."""
        return pin_for_scan(
            plan, self.pins, lambda sha256: record_profile_digest(self.store, plan.run_id, sha256)
        )

    def run(self, run_id: str) -> tuple[RunPlan, RunContext, Rejected | None] | None:
        """The run's plan as this worker will execute it, its pipeline, and the reason the
        worker refuses it (None when it may run)."""
        cached = self._plans.get(run_id)
        if cached is None:
            data = self.store.plan(run_id)
            if data is None:
                return None
            meta = self.store.meta(run_id)
            if len(self._plans) > 64:
                self._plans.clear()
            cached = self._plans[run_id] = worker_plan(
                RunPlan.from_dict(data), meta.get("results_dir")
            )
        plan, results, rejected = cached
        pipe = RunContext(
            self.clients,
            self.store,
            self.slots,
            results,
            hooks=(sweeping.write_drift,),
            sandbox=self.sandbox,
        )
        return plan, pipe, rejected


def _sandbox_mode() -> str:
    """This worker's sandbox mode for run.json (`scanfleet worker` refused to start without
    one; a scan started anyway is refused by `run_auditor`)."""
    try:
        return sandbox.mode_label(settings.sandbox)
    except SandboxUnavailable:
        return "unavailable"


def worker_plan(
    plan: RunPlan, results_dir: str | None
) -> tuple[RunPlan, ResultsStore, Rejected | None]:
    """Apply the worker's policy to a plan read from Redis (see policy.py).

    The auditor always comes from this worker's settings. A results directory outside
    SCANFLEET_RESULTS_DIR, a profile off the allow-list or a refused auditor argument
    rejects the plan: its targets get `rejected` error results in the worker's own
    results directory, and nothing runs.
    """
    plan = replace(
        plan,
        auditor=settings.auditor,
        profile_url=credentialed(plan.profile, settings.allowed_profiles),
    )
    own = open_results(None, settings)
    try:
        results = check_results_location(results_dir, own, settings)
    except BadInput as e:
        log.error("run.rejected", reason=str(e))
        return plan, own, Rejected(f"worker refused the run: {e}")
    try:
        check_profile(plan.profile, settings.allowed_profiles)
        check_auditor_args(plan.extra_args)
        check_ttl(plan.token_ttl, int(plan.timeout))
    except BadInput as e:
        log.error("run.rejected", reason=str(e))
        return plan, results, Rejected(f"worker refused the run: {e}")
    return plan, results, None


_runtime: _Runtime | None = None
_runtime_lock = threading.Lock()


def runtime() -> _Runtime:
    global _runtime  # noqa: PLW0603 - one per process, created lazily after the fork
    with _runtime_lock:
        if _runtime is None:
            _runtime = _Runtime()
        return _runtime


def _fresh_runtime(**_kwargs: Any) -> None:
    """A forked child must not share its parent's sockets."""
    global _runtime  # noqa: PLW0603
    _runtime = None


worker_process_init.connect(_fresh_runtime, weak=False)


def _warm_imports(**_kwargs: Any) -> None:
    """In the main process, before the pool forks: the kubernetes client imports its API
    modules lazily (seconds each), so every child would pay that on its first scan."""
    from scanfleet.kube import client as kube

    client = getattr(kube, "k8s", None)
    for name in ("CoreV1Api", "RbacAuthorizationV1Api", "AuthenticationV1Api", "V1Pod"):
        getattr(client, name, None)


worker_init.connect(_warm_imports, weak=False)

_watcher: Watcher | None = None


def _start_recovery(**_kwargs: Any) -> None:
    """In the worker's main process, once the pool has forked: watch for expired leases
    with a runtime of its own (the pool's children never share its sockets)."""
    global _watcher  # noqa: PLW0603 - one per worker process
    rt = _Runtime()

    def publish(run_id: str, target: Mapping[str, Any]) -> None:
        app.send_task(SCAN_TASK, args=[run_id, dict(target)], queue=QUEUE)

    _watcher = Watcher(
        lambda: recover_expired(rt.slots, rt.store, rt.clients, publish), tuning.lease_seconds / 2
    ).start()


def _stop_recovery(**_kwargs: Any) -> None:
    if _watcher is not None:
        _watcher.stop()


worker_ready.connect(_start_recovery, weak=False)
worker_shutdown.connect(_stop_recovery, weak=False)


def _task(**options: Any) -> Callable[[F], F]:
    """`app.task`, typed (Celery ships no annotations)."""
    return cast(Callable[[F], F], app.task(**options))


def _record_rejected(pipe: RunContext, plan: RunPlan, target: Target, rejected: ScanError) -> str:
    if isinstance(rejected, ProfileMismatch) and rejected.pinned:
        plan = replace(plan, profile_sha256=rejected.pinned)  # the run's digest, not ours
    if not pipe.state.is_done(plan.run_id, scan_id_for(plan.run_id, target)):
        record_failure(pipe, plan, target, rejected)
    return "error"


@_task(bind=True, name=FAN_OUT_TASK, max_retries=None, acks_late=True)
def fan_out_task(self: Any, run_id: str, start: int, stop: int) -> int:
    with structlog.contextvars.bound_contextvars(run_id=run_id):
        try:
            rt = runtime()
            found = rt.run(run_id)
            if found is None:
                log.warning("run.unknown", start=start, stop=stop)
                return 0
            plan, pipe, _rejected = found  # unresolved entries are recorded; scans refuse
            entries = [Entry.from_dict(d) for d in rt.store.entries(run_id, start, stop)]

            def enqueue(target: Target) -> None:
                app.send_task(SCAN_TASK, args=[run_id, target.to_dict()], queue=QUEUE)

            n = fan_out(pipe, plan, entries, enqueue)
            log.info("run.fanned_out", start=start, stop=stop, queued=n)
            return n
        except StoreUnavailable as e:
            _retry_or_continue(self, e, {})
            raise


@_task(bind=True, name=SCAN_TASK, max_retries=None, acks_late=True)
def scan_target(
    self: Any, run_id: str, target: dict[str, Any], attempts: dict[str, int] | None = None
) -> str | None:
    t = Target.from_dict(target)
    with structlog.contextvars.bound_contextvars(
        run_id=run_id, context=t.context, namespace=t.namespace, pod=t.pod, container=t.container
    ):
        try:
            rt = runtime()
            found = rt.run(run_id)
            if found is None:
                log.warning("run.unknown")
                return None
            plan, pipe, rejected = found
            if rejected is not None:
                return _record_rejected(pipe, plan, t, rejected)
            try:
                plan = rt.pin_profile(plan)
            except (ProfileUnavailable, ProfileMismatch) as e:
                return _record_rejected(pipe, plan, t, e)  # no auditor runs
        except StoreUnavailable as e:
            _retry_or_continue(self, e, {})
            raise
        tried = dict(attempts or {})
        try:
            scanned = run_target(pipe, plan, t)
            if scanned is None:
                return None
            if scanned.error is not None:
                _retry_or_continue(self, scanned.error, tried)
            summary = complete(pipe, plan, scanned)
        except FleetBusy as e:
            _retry_or_continue(self, e, tried)
            raise  # not reached: FleetBusy is always retried
        except ScanInterrupted:
            raise  # the worker is stopping; the message is redelivered
        except Retry:
            raise  # an unreachable cluster's retry (scanned.error), not a failure to record
        except Exception as e:
            log.exception("scan.failed_unexpectedly")
            try:
                summary = record_failure(pipe, plan, t, e)
            except StoreUnavailable as e2:
                _retry_or_continue(self, e2, tried)
                raise
        return str(summary["status"])


def _retry_or_continue(task: Any, error: Exception, tried: dict[str, int]) -> None:
    """The fleet's retry policy: retry `error` later if `clock.RETRY_DELAYS` says so.

    Raises Celery's Retry (the message comes back after the table's backoff) while the
    error is retryable and its attempts last; returns when it must be recorded instead.
    """
    delay = retry_delay(error)
    key = type(error).__name__
    n = tried.get(key, 0)
    if delay is None or (delay.attempts is not None and n >= delay.attempts):
        return
    countdown = backoff(
        delay, n, lease_seconds=tuning.lease_seconds, scale=settings.retry_delay_scale
    )
    log.warning("scan.deferred", reason=key, error=str(error), countdown=round(countdown, 1))
    raise task.retry(countdown=countdown, exc=error, kwargs={"attempts": {**tried, key: n + 1}})


@_task(name=SWEEP_TICK_TASK, acks_late=False, ignore_result=True)
def sweep_tick(name: str, sweep: Mapping[str, Any], lock_ttl: int = LOCK_TTL) -> str | None:
    # acks_late off: a redelivered tick would be a second start attempt; the lock would
    # refuse it anyway, and the next tick comes on schedule.
    s = Sweep.from_dict(sweep)
    if s.name != name:
        raise ScanfleetError(f"sweep tick {name!r} carries sweep {s.name!r}")
    # The tick came without the profile URL's credentials: ours, from the allow-list.
    s = replace(s, profile=credentialed(s.profile, settings.allowed_profiles) or s.profile)
    lock = SweepLock(runtime().store, open_results(None, settings))
    start = sweeping.starter(fan_out_publisher(app))
    return sweeping.run_tick(s, lock, start, settings, lock_ttl=lock_ttl)


@_task(name=JANITOR_TASK, ignore_result=True)
def janitor_task(
    contexts: list[str] | None = None, all_contexts: bool = True, dry_run: bool = False
) -> dict[str, Any]:
    rt = runtime()
    early = None
    if settings.early_revoke_after > 0:
        early = EarlyRevoke(
            rt.slots,
            functools.cache(lambda run_id: bool(rt.store.meta(run_id))),
            min_age=timedelta(seconds=settings.early_revoke_after),
        )
    report = janitor_for_kubeconfig(
        rt.clients.kubeconfig,
        contexts or [],
        all_contexts and not contexts,
        dry_run=dry_run,
        now=utcnow(),
        early=early,
    )
    posture.janitor_finished(report)
    return report.to_dict()


@_task(name=PRUNE_TASK, ignore_result=True)
def prune_task(older_than_days: int | None = None) -> dict[str, Any]:
    days = older_than_days or settings.retention_days
    report = prune(open_results(None, settings), days, now=utcnow(), store=runtime().store)
    return report.to_dict()
