"""Celery beat: the schedule of sweeps and of the periodic operations tasks (SPEC §7).

`scanfleet beat --sweeps FILE` runs Celery's own beat service on the fleet's Celery app
with a schedule built here:

- one entry per sweep, `scanfleet.sweep_tick(name, sweep=...)`, on a `CronSchedule`: a
  celery schedule class whose fire times come from croniter (the same library that
  validated the expression), in UTC;
- `scanfleet.identity.janitor` every `janitor_interval` seconds (default 15 minutes);
- `scanfleet.prune` every `prune_interval` seconds (default 6 hours).

Only schedules: the tasks run on the workers (worker.tasks), and what a tick does is
`scanfleet.sweeps.tick`. Never carries a credential in a task message: a sweep's profile URL
is sent without its user:password@ (`tick_sweep`); the worker that runs the tick adds the
credentials of its own SCANFLEET_ALLOWED_PROFILES entry, as for `submit` (policy.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from celery.schedules import BaseSchedule, schedstate

from scanfleet.core.clock import Clock, utcnow
from scanfleet.core.logs import remember_url
from scanfleet.core.policy import safe_url
from scanfleet.store.locks import LOCK_TTL
from scanfleet.sweeps.spec import JANITOR_INTERVAL, PRUNE_INTERVAL, Sweep, next_fire
from scanfleet.worker.app import JANITOR_TASK, PRUNE_TASK, SWEEP_TICK_TASK

log = structlog.get_logger(__name__)


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
            "kwargs": {"sweep": tick_sweep(s), "lock_ttl": lock_ttl},
        }
        for s in sweeps
    }
    entries.update(periodic_entries(janitor_interval, prune_interval))
    return entries


def tick_sweep(sweep: Sweep) -> dict[str, Any]:
    """The sweep as a tick message carries it: the profile URL without credentials."""
    return {**sweep.to_dict(), "profile": safe_url(sweep.profile)}


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
        if safe_url(s.profile) != s.profile:
            remember_url(s.profile)  # redacted from beat's own logs too
            log.warning(
                "beat.profile_credentials_not_sent",
                sweep=s.name,
                reason="tick messages carry the profile URL without credentials; "
                "workers add them from SCANFLEET_ALLOWED_PROFILES",
            )
    kwargs: dict[str, Any] = {"max_interval": max_interval, "quiet": True}
    if schedule_file is not None:
        kwargs["schedule"] = str(schedule_file)
    else:
        # In memory: a restart forgets last-run times, so nothing "missed" fires at start.
        kwargs["scheduler"] = "celery.beat:Scheduler"
    app.Beat(**kwargs).run()
