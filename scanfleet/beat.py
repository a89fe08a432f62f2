"""Celery beat for sweeps, and the periodic operations tasks (SPEC §7, issue #5).

`scanfleet beat --sweeps FILE` runs Celery's own beat service on the fleet's Celery app
with a schedule built here:

- one entry per sweep, `scanfleet.sweep_tick(name, sweep=...)`, on a `CronSchedule`: a
  celery schedule class whose fire times come from croniter (the same library that
  validated the expression), in UTC;
- `scanfleet.janitor` every `janitor_interval` seconds (default 15 minutes);
- `scanfleet.prune` every `prune_interval` seconds (default 6 hours).

The tasks run on the workers. A sweep tick is an ordinary run with `source: "sweep:<name>"`,
started through one function (`Starter`). It first takes the sweep's lock in Redis
(`<prefix>:sweep:<name>:lock`, SET NX with expiry): a sweep whose previous run has not
finished is skipped and logged (`sweep.skipped`), never started twice — even when two beat
processes send the same tick. The lock holds the run id; it is free again once that run is
finalized (run store) or its run.json exists, and its TTL is the backstop for a run that
never finishes. The lock itself is `store.locks.SweepLock` (only the store imports redis).

Never carries a credential in a task message: sweeps name contexts, never tokens.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from celery import shared_task
from celery.schedules import BaseSchedule, schedstate

from scanfleet.clock import Clock, utcnow
from scanfleet.errors import ScanfleetError
from scanfleet.janitor import janitor_for_kubeconfig
from scanfleet.kube import default_kubeconfig
from scanfleet.retention import prune
from scanfleet.settings import Settings
from scanfleet.store.locks import LOCK_TTL, SweepLock
from scanfleet.store.runs import RunStore
from scanfleet.sweeps import Sweep, next_fire

log = structlog.get_logger("scanfleet.beat")

SWEEP_TICK_TASK = "scanfleet.sweep_tick"
JANITOR_TASK = "scanfleet.janitor"
PRUNE_TASK = "scanfleet.prune"
JANITOR_INTERVAL = 15 * 60
PRUNE_INTERVAL = 6 * 3600

class CronSchedule(BaseSchedule):  # type: ignore[misc]
    """A celery schedule for a 5-field UTC cron expression, computed by croniter.

    Due when the first fire time after `last_run_at` has come; the time to the following
    fire time is what beat sleeps. `nowfun` injects the clock (tests); it must be a
    module-level function if the schedule is persisted (beat pickles entries).
    """

    def __init__(self, expr: str, nowfun: Clock | None = None, app: Any = None) -> None:
        super().__init__(nowfun=nowfun, app=app)
        self.expr = expr

    def now(self) -> datetime:
        return (self.nowfun or utcnow)().astimezone(UTC)

    def _next(self, after: datetime) -> datetime:
        return next_fire(self.expr, self.maybe_make_aware(after))

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        return self._next(last_run_at) - self.now()

    def is_due(self, last_run_at: datetime) -> Any:
        """`schedstate(is_due, seconds until the next check)`."""
        now = self.now()
        if self._next(last_run_at) <= now:
            return schedstate(True, (self._next(now) - now).total_seconds())
        return schedstate(False, max((self._next(last_run_at) - now).total_seconds(), 0.0))

    def __reduce__(self) -> tuple[type[CronSchedule], tuple[str, Clock | None]]:
        return self.__class__, (self.expr, self.nowfun)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CronSchedule):
            return other.expr == self.expr and other.nowfun == self.nowfun
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<CronSchedule {self.expr!r} UTC>"


def beat_schedule(
    sweeps: list[Sweep],
    *,
    janitor_interval: float = JANITOR_INTERVAL,
    prune_interval: float = PRUNE_INTERVAL,
    lock_ttl: int = LOCK_TTL,
    nowfun: Clock | None = None,
) -> dict[str, dict[str, Any]]:
    """`app.conf.beat_schedule` for these sweeps plus the janitor and retention tasks."""
    entries: dict[str, dict[str, Any]] = {
        f"sweep:{s.name}": {
            "task": SWEEP_TICK_TASK,
            "schedule": CronSchedule(s.schedule, nowfun=nowfun),
            "args": (s.name,),
            "kwargs": {"sweep": s.to_dict(), "lock_ttl": lock_ttl},
        }
        for s in sweeps
    }
    entries.update(periodic_entries(janitor_interval, prune_interval))
    return entries


def periodic_entries(
    janitor_interval: float = JANITOR_INTERVAL, prune_interval: float = PRUNE_INTERVAL
) -> dict[str, dict[str, Any]]:
    """The janitor and retention beat entries, for any beat that schedules the workers."""
    return {
        "scanfleet-janitor": {"task": JANITOR_TASK, "schedule": float(janitor_interval)},
        "scanfleet-prune": {"task": PRUNE_TASK, "schedule": float(prune_interval)},
    }


def run_beat(
    app: Any,
    sweeps: list[Sweep],
    *,
    schedule_file: Path | None = None,
    max_interval: float | None = None,
    janitor_interval: float = JANITOR_INTERVAL,
    prune_interval: float = PRUNE_INTERVAL,
    lock_ttl: int = LOCK_TTL,
    nowfun: Clock | None = None,
) -> None:
    """Run Celery's beat service (blocks). Persistent only with a schedule file."""
    app.conf.beat_schedule = beat_schedule(
        sweeps,
        janitor_interval=janitor_interval,
        prune_interval=prune_interval,
        lock_ttl=lock_ttl,
        nowfun=nowfun,
    )
    app.conf.timezone = "UTC"
    app.conf.enable_utc = True
    for s in sweeps:
        log.info("beat.sweep_scheduled", sweep=s.name, schedule=s.schedule)
    kwargs: dict[str, Any] = {"max_interval": max_interval, "quiet": True}
    if schedule_file is not None:
        kwargs["schedule"] = str(schedule_file)
    else:
        # In memory: a restart forgets last-run times, so nothing "missed" fires at start.
        kwargs["scheduler"] = "celery.beat:Scheduler"
    app.Beat(**kwargs).run()


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


_starter: Starter | None = None


def set_starter(starter: Starter | None) -> None:
    """Replace how a tick starts its run (tests; None: the fleet's default)."""
    global _starter  # noqa: PLW0603 - one process-wide seam, set at start-up
    _starter = starter


def default_starter(sweep: Sweep, settings: Settings) -> str:
    """Start a sweep's run through the fleet: discovery, then fan-out over Celery.

    The contract with the fleet (`scanfleet.fleet.start_fleet_run`): validate, discover,
    store the run and enqueue it exactly as `submit` does, with `source`, and return the
    run id once the run exists in the store (so the lock can follow it).
    """
    from scanfleet.fleet import start_fleet_run  # late: the fleet imports Celery's app

    run_id: str = start_fleet_run(
        settings=settings,
        kubeconfig=default_kubeconfig(None, os.environ),
        contexts=sweep.contexts,
        all_contexts=sweep.all_contexts,
        namespaces=sweep.namespaces,
        all_namespaces=sweep.all_namespaces,
        exclude_namespaces=sweep.exclude_namespaces,
        selector=sweep.selector,
        profile=sweep.profile,
        input_files=sweep.inputs,
        threshold=Path(sweep.threshold) if sweep.threshold else None,
        fleet_threshold=Path(sweep.fleet_threshold) if sweep.fleet_threshold else None,
        dedupe_images=sweep.dedupe_images,
        source=sweep.source,
    )
    return run_id


def _store(settings: Settings) -> RunStore:
    return RunStore.from_url(settings.broker_url, settings.key_prefix, settings.retention_days)


# -- tasks (thin: decode, bind, call one service function) -------------------------------


@shared_task(name=SWEEP_TICK_TASK, acks_late=False, ignore_result=True)  # type: ignore[untyped-decorator]
def sweep_tick(name: str, sweep: Mapping[str, Any], lock_ttl: int = LOCK_TTL) -> str | None:
    # acks_late off: a redelivered tick would be a second start attempt; the lock would
    # refuse it anyway, and the next tick comes on schedule.
    settings = Settings.from_env()
    s = Sweep.from_dict(sweep)
    if s.name != name:
        raise ScanfleetError(f"sweep tick {name!r} carries sweep {s.name!r}")
    lock = SweepLock(_store(settings), settings.results_dir)
    return run_tick(s, lock, _starter or default_starter, settings, lock_ttl=lock_ttl)


@shared_task(name=JANITOR_TASK, ignore_result=True)  # type: ignore[untyped-decorator]
def janitor_task(
    contexts: list[str] | None = None, all_contexts: bool = True, dry_run: bool = False
) -> dict[str, Any]:
    kubeconfig = default_kubeconfig(None, os.environ)
    report = janitor_for_kubeconfig(
        kubeconfig, contexts or [], all_contexts and not contexts, dry_run=dry_run, now=utcnow()
    )
    return report.to_dict()


@shared_task(name=PRUNE_TASK, ignore_result=True)  # type: ignore[untyped-decorator]
def prune_task(older_than_days: int | None = None) -> dict[str, Any]:
    settings = Settings.from_env()
    days = older_than_days or settings.retention_days
    report = prune(settings.results_dir, days, now=utcnow(), store=_store(settings))
    return report.to_dict()
