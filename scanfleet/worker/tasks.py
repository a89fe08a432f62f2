"""Every Celery task, registered one way (`register`, called by `worker.app.create_app`):
decode, bind log context, call one service. Each task is bound and reads its settings from
its app's `WorkerContext`, never from a module global. Wire name -> function:

    scanfleet.fan_out(run_id, start, stop)                   fan_out_task
        read target entries [start, stop) of the run from Redis, queue one scan each
        (entries that could not be resolved at submit time are recorded as errors here)
    scanfleet.scan_target(run_id, target, attempts)          scan_target_task
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

    scanfleet.sweep_tick(name, sweep)                        sweep_tick_task
        sweeps.tick.run_tick, starting runs via runs.fleet.submit_run (or the app's
        `start_sweep`)

Every worker's main process also runs recovery.py's watcher (every lease/2): a scan whose
lease expired without a result is revoked and published again here, long before Redis
would redeliver the dead worker's message. It also records every message it receives
(`task_received`: prefetched, deferred until its countdown, or run) under a worker lease
it renews every lease/3 (store/holders.py); a worker whose lease expired is claimed by
one watcher, which gives its messages back to the queue through kombu's own restore.
A message lost outright (kombu pops it before recording it as unacknowledged) is caught by
recovery.py's `OrphanSweep` once the broker is idle: the run's targets without a result
are fanned out again.
    scanfleet.janitor / scanfleet.prune      janitor_task / prune_task, on beat's schedule
"""

from __future__ import annotations

import functools
import secrets
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any, cast

import structlog
from celery.exceptions import Retry
from celery.signals import task_received, worker_process_init, worker_ready, worker_shutdown

from scanfleet.core.clock import backoff, retry_delay, utcnow
from scanfleet.core.errors import (
    BadInput,
    FleetBusy,
    ProfileMismatch,
    ProfileUnavailable,
    Rejected,
    SandboxUnavailable,
    ScanfleetError,
    ScanInterrupted,
    StoreUnavailable,
)
from scanfleet.core.policy import check_auditor_args, check_profile, credentialed
from scanfleet.core.settings import Settings, check_ttl
from scanfleet.core.targets import Target
from scanfleet.identity.janitor import EarlyRevoke, janitor_for_kubeconfig
from scanfleet.kube.client import ClientCache
from scanfleet.profiles.fetch import RunPins, fetch_config, pin_for_scan
from scanfleet.runs.discovery import Entry
from scanfleet.runs.pipeline import RunContext, complete, fan_out, record_error, run_target
from scanfleet.runs.recovery import OrphanSweep, Watcher, recover_expired
from scanfleet.runs.retention import prune
from scanfleet.sandbox.inputs import check_plan_inputs
from scanfleet.sandbox.policy import mode_label
from scanfleet.scan.auditor import Host
from scanfleet.scan.plan import RunPlan
from scanfleet.store.holders import MessageHolders
from scanfleet.store.locks import LOCK_TTL, SweepLock
from scanfleet.store.pins import record_profile_digest
from scanfleet.store.results import ResultsStore, check_results_location, open_results
from scanfleet.store.slots import RedisSlots
from scanfleet.store.state import RunStore
from scanfleet.sweeps import posture
from scanfleet.sweeps.spec import Sweep
from scanfleet.sweeps.tick import Starter, finalize_hooks, run_tick, start_sweep_run
from scanfleet.worker.app import (
    FAN_OUT_TASK,
    JANITOR_TASK,
    PRUNE_TASK,
    QUEUE,
    SCAN_TASK,
    SWEEP_TICK_TASK,
    FleetTuning,
    fan_out_publisher,
)

log = structlog.get_logger(__name__)

WORKER_ID = secrets.token_hex(8)
"""This worker's id in the message and lease owner records (holders.py): drawn in the
main process when the app imports this module, inherited by the pool's forked children."""


class _Runtime:
    """Per worker process: one Redis client, one Kubernetes client per context, plans."""

    def __init__(self, settings: Settings, tuning: FleetTuning) -> None:
        self.settings = settings
        self.store = RunStore.from_url(
            settings.broker_url, settings.key_prefix, settings.retention_days
        )
        self.clients = ClientCache(settings.kubeconfig, retries=settings.kube_retries)
        self.slots = RedisSlots(
            self.store,
            settings.cluster_concurrency,
            lease_seconds=tuning.lease_seconds,
            holder=WORKER_ID,
        )
        self._plans: dict[str, tuple[RunPlan, ResultsStore, Rejected | None]] = {}
        self.sandbox = _sandbox_mode(settings)
        self.host = Host.from_settings(settings)
        self.pins = RunPins(fetch_config(settings))

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
                RunPlan.from_dict(data), meta.get("results_dir"), self.settings
            )
        plan, results, rejected = cached
        pipe = RunContext(
            self.clients,
            self.store,
            self.slots,
            results,
            hooks=finalize_hooks(plan),
            sandbox=self.sandbox,
            host=self.host,
        )
        return plan, pipe, rejected


def _sandbox_mode(settings: Settings) -> str:
    """This worker's sandbox mode for run.json (`scanfleet worker` refused to start without
    one; a scan started anyway is refused by `run_auditor`)."""
    try:
        return mode_label(settings.sandbox)
    except SandboxUnavailable:
        return "unavailable"


def worker_plan(
    plan: RunPlan, results_dir: str | None, settings: Settings
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
        check_plan_inputs(plan.input_files, plan.extra_args, settings.allowed_inputs)
        check_ttl(plan.token_ttl, int(plan.timeout))
    except BadInput as e:
        log.error("run.rejected", reason=str(e))
        return plan, results, Rejected(f"worker refused the run: {e}")
    return plan, results, None


class WorkerContext:
    """What the tasks of one app share: its settings and timings, how a sweep tick starts
    its run, and this process's runtime (created lazily, and again in each forked child)."""

    def __init__(
        self, app: Any, settings: Settings, tuning: FleetTuning, start_sweep: Starter | None
    ) -> None:
        self.app = app
        self.settings = settings
        self.tuning = tuning
        self.start_sweep: Starter = start_sweep or (
            lambda sweep, s: start_sweep_run(sweep, s, fan_out_publisher(app))
        )
        self._runtime: _Runtime | None = None
        self._lock = threading.Lock()
        self._watcher: Watcher | None = None
        self._lease: Watcher | None = None
        self._holders: MessageHolders | None = None

    @staticmethod
    def of(task: Any) -> WorkerContext:
        """The context of the app a (bound) task runs on."""
        return cast(WorkerContext, task.app.scanfleet)

    def runtime(self) -> _Runtime:
        with self._lock:
            if self._runtime is None:
                self._runtime = _Runtime(self.settings, self.tuning)
            return self._runtime

    def forget_runtime(self, **_kwargs: Any) -> None:
        """A forked child must not share its parent's sockets."""
        self._runtime = None

    def log_ready(self, sender: Any = None, **_kwargs: Any) -> None:
        if getattr(sender, "app", None) is self.app:
            log.info("worker.ready", queue=QUEUE, visibility_timeout=self.tuning.visibility_timeout)

    def start_recovery(self, sender: Any = None, **_kwargs: Any) -> None:
        """In the worker's main process, once the pool has forked: watch for expired leases
        and dead workers' messages with a runtime of its own (the pool's children never
        share its sockets), and keep this worker's own lease alive."""
        if getattr(sender, "app", None) is not self.app:
            return
        rt = _Runtime(self.settings, self.tuning)

        def publish(run_id: str, target: Mapping[str, Any]) -> None:
            self.app.send_task(SCAN_TASK, args=[run_id, dict(target)], queue=QUEUE)

        holders = self.holders()
        unacked = self._unacked_key()
        orphans = OrphanSweep(
            rt.store,
            idle=lambda: holders.broker_idle(QUEUE, unacked),
            recent=holders.recent_runs,
            claim=lambda run_id: holders.claim_orphans(run_id, self.tuning.lease_seconds),
            publish=fan_out_publisher(self.app),
        )

        def check() -> None:
            recover_expired(
                rt.slots,
                rt.store,
                rt.clients,
                publish,
                workers=holders,
                restore=self._restore_messages,
                unheld=lambda: holders.claim_unheld(unacked, QUEUE),
            )
            orphans()

        self._watcher = Watcher(check, self.tuning.lease_seconds / 2).start()
        self._lease = Watcher(
            lambda: holders.beat(WORKER_ID, unacked),
            self.tuning.lease_seconds / 3,
            name="scanfleet-worker-lease",
        ).start()
        log.info("worker.lease", worker=WORKER_ID, lease_seconds=self.tuning.lease_seconds)

    def stop_recovery(self, sender: Any = None, **_kwargs: Any) -> None:
        if getattr(sender, "app", None) is not self.app:
            return
        if self._watcher is not None:
            self._watcher.stop()
        if self._lease is not None:
            self._lease.stop()
            try:
                self.holders().drop(WORKER_ID)  # kombu gives our unacked messages back itself
            except StoreUnavailable as e:
                log.warning("worker.drop_failed", error=str(e))

    def holders(self) -> MessageHolders:
        """The main process's owner records of received messages (its own Redis client)."""
        with self._lock:
            if self._holders is None:
                s = self.settings
                store = RunStore.from_url(s.broker_url, s.key_prefix, s.retention_days)
                self._holders = MessageHolders(store, self.tuning.lease_seconds)
            return self._holders

    def hold_message(self, sender: Any = None, request: Any = None, **_kwargs: Any) -> None:
        """`task_received` (main process): record the message before it is reserved,
        scheduled for its countdown or run. A Redis outage here is logged, never raised
        into the consumer: the message then falls back to the visibility timeout."""
        if getattr(sender, "app", self.app) is not self.app:
            return
        tag = getattr(getattr(request, "message", None), "delivery_tag", None)
        if tag is None:
            return
        try:
            self.holders().hold(WORKER_ID, str(tag))
        except StoreUnavailable as e:
            log.warning("message.hold_failed", error=str(e))

    def _unacked_key(self) -> str:
        """The broker's hash of unacknowledged messages (kombu's Redis transport)."""
        with self.app.connection_for_write() as conn:
            channel = conn.default_channel
            prefix = str(getattr(channel, "global_keyprefix", "") or "")
            return prefix + str(channel.unacked_key)

    def _restore_messages(self, tags: Sequence[str]) -> int:
        """Give a dead worker's messages back to the queue now: kombu's restore of an
        unacknowledged message (atomic per tag; one already acknowledged is skipped)."""
        with self.app.connection_for_write() as conn:
            qos = conn.default_channel.qos
            for tag in tags:
                qos.restore_by_tag(tag)
        return len(tags)


def register(
    app: Any, settings: Settings, tuning: FleetTuning, *, start_sweep: Starter | None = None
) -> WorkerContext:
    """Register every task on `app` (worker.app.create_app), sharing one WorkerContext.

    The signal receivers are bound methods, held weakly: an app that goes away takes its
    receivers with it.
    """
    ctx = WorkerContext(app, settings, tuning, start_sweep)
    app.scanfleet = ctx
    worker_process_init.connect(ctx.forget_runtime)
    worker_ready.connect(ctx.log_ready)
    worker_ready.connect(ctx.start_recovery)
    worker_shutdown.connect(ctx.stop_recovery)
    task_received.connect(ctx.hold_message)
    options: dict[str, Any] = {"bind": True, "shared": False}
    app.task(name=FAN_OUT_TASK, max_retries=None, acks_late=True, **options)(fan_out_task)
    app.task(name=SCAN_TASK, max_retries=None, acks_late=True, **options)(scan_target_task)
    # acks_late off: a redelivered tick would be a second start attempt; the lock would
    # refuse it anyway, and the next tick comes on schedule.
    app.task(name=SWEEP_TICK_TASK, acks_late=False, ignore_result=True, **options)(sweep_tick_task)
    app.task(name=JANITOR_TASK, ignore_result=True, **options)(janitor_task)
    app.task(name=PRUNE_TASK, ignore_result=True, **options)(prune_task)
    return ctx


def fan_out_task(self: Any, run_id: str, start: int, stop: int) -> int:
    with structlog.contextvars.bound_contextvars(run_id=run_id):
        try:
            rt = WorkerContext.of(self).runtime()
            found = rt.run(run_id)
            if found is None:
                log.warning("run.unknown", start=start, stop=stop)
                return 0
            plan, pipe, _rejected = found  # unresolved entries are recorded; scans refuse
            entries = [Entry.from_dict(d) for d in rt.store.entries(run_id, start, stop)]

            def enqueue(target: Target) -> None:
                self.app.send_task(SCAN_TASK, args=[run_id, target.to_dict()], queue=QUEUE)

            n = fan_out(pipe, plan, entries, enqueue)
            log.info("run.fanned_out", start=start, stop=stop, queued=n)
            return n
        except StoreUnavailable as e:
            _retry_or_continue(self, e, {})
            raise


def scan_target_task(
    self: Any, run_id: str, target: dict[str, Any], attempts: dict[str, int] | None = None
) -> str | None:
    t = Target.from_dict(target)
    with structlog.contextvars.bound_contextvars(
        run_id=run_id, context=t.context, namespace=t.namespace, pod=t.pod, container=t.container
    ):
        try:
            rt = WorkerContext.of(self).runtime()
            found = rt.run(run_id)
            if found is None:
                log.warning("run.unknown")
                return None
            plan, pipe, rejected = found
            if rejected is not None:
                return str(record_error(pipe, plan, t, rejected)["status"])
            try:
                plan = rt.pin_profile(plan)
            except (ProfileUnavailable, ProfileMismatch) as e:
                return str(record_error(pipe, plan, t, e)["status"])  # no auditor runs
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
                summary = record_error(pipe, plan, t, e)
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
    ctx = WorkerContext.of(task)
    countdown = backoff(
        delay, n, lease_seconds=ctx.tuning.lease_seconds, scale=ctx.settings.retry_delay_scale
    )
    log.warning("scan.deferred", reason=key, error=str(error), countdown=round(countdown, 1))
    raise task.retry(countdown=countdown, exc=error, kwargs={"attempts": {**tried, key: n + 1}})


def sweep_tick_task(
    self: Any, name: str, sweep: Mapping[str, Any], lock_ttl: int = LOCK_TTL
) -> str | None:
    ctx = WorkerContext.of(self)
    settings = ctx.settings
    s = Sweep.from_dict(sweep)
    if s.name != name:
        raise ScanfleetError(f"sweep tick {name!r} carries sweep {s.name!r}")
    # The tick came without the profile URL's credentials: ours, from the allow-list.
    s = replace(s, profile=credentialed(s.profile, settings.allowed_profiles) or s.profile)
    lock = SweepLock(ctx.runtime().store, open_results(None, settings))
    return run_tick(s, lock, ctx.start_sweep, settings, lock_ttl=lock_ttl)


def janitor_task(
    self: Any,
    contexts: list[str] | None = None,
    all_contexts: bool = True,
    dry_run: bool = False,
) -> dict[str, Any]:
    ctx = WorkerContext.of(self)
    settings = ctx.settings
    rt = ctx.runtime()
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


def prune_task(self: Any, older_than_days: int | None = None) -> dict[str, Any]:
    ctx = WorkerContext.of(self)
    days = older_than_days or ctx.settings.retention_days
    report = prune(open_results(None, ctx.settings), days, now=utcnow(), store=ctx.runtime().store)
    return report.to_dict()
