"""The Celery application: Redis broker, JSON only, at-least-once delivery.

Delivery guarantees the fleet builds on (kombu's Redis transport):
- `task_acks_late` + `task_reject_on_worker_lost`: a message is acknowledged only after its
  task returns; a worker that dies mid-scan leaves it in kombu's `unacked` set, and any
  live worker's periodic `restore_visible` sweep puts it back on the queue once it is older
  than `visibility_timeout`. The visibility timeout is therefore above the longest task
  (scan timeout + time limits' margin), or a slow scan would be delivered twice.
- `worker_prefetch_multiplier = 1`: a worker reserves no more scans than it has processes.
- No result backend: run state is ours, in Redis (store/).
Tasks are idempotent (scan ids derive from run and target, results are a set), so the rare
duplicate delivery costs time, never a second result.

Delivery settings (read by `Settings`, like every other variable):
- `SCANFLEET_VISIBILITY_TIMEOUT` seconds (default: hard time limit + 300). Tests use a
  few seconds so a killed worker's scans come back quickly; in production leave it above
  the longest scan.
- `SCANFLEET_LEASE_SECONDS` (default 60): a cluster-slot lease's lifetime between
  heartbeats; how long a dead worker's slot stays taken.

The broker is the fleet's control plane, so:
- authentication: a password or ACL user travels in the broker URL
  (`redis://user:password@host:6379/0`), or the URL is read from a mounted file
  (`SCANFLEET_BROKER_URL_FILE`, see settings.py); the password is redacted from every log
  line (logs.remember_url);
- TLS: a `rediss://` URL with the redis-py/kombu query convention
  (`?ssl_cert_reqs=required&ssl_ca_certs=/path/ca.pem[&ssl_certfile=..&ssl_keyfile=..]`).
  kombu silently falls back to an unverified connection for a bare `rediss://` URL;
  `broker_tls` makes certificate verification the default instead (redis-py, used by
  the run store, already defaults to `required`);
- remote control is off on workers (`worker_enable_remote_control=False`): nobody who can
  write the broker can shut down, reconfigure or rate-limit a worker through Celery's
  control commands.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from celery import Celery
from celery.signals import setup_logging

from scanfleet.core.settings import Settings
from scanfleet.sweeps.tick import Starter

QUEUE = "scanfleet"
FAN_OUT_TASK = "scanfleet.fan_out"
SCAN_TASK = "scanfleet.scan_target"
SWEEP_TICK_TASK = "scanfleet.sweep_tick"
JANITOR_TASK = "scanfleet.janitor"
PRUNE_TASK = "scanfleet.prune"


@dataclass(frozen=True)
class FleetTuning:
    """Delivery and lease timings derived from the scan timeout."""

    soft_time_limit: int
    """Seconds before SoftTimeLimitExceeded: the scan's own timeout fires well before."""
    time_limit: int
    """Hard limit: the process is killed (and the scan redelivered) after this."""
    visibility_timeout: int
    """Seconds an unacknowledged message waits before redelivery (SCANFLEET_VISIBILITY_TIMEOUT)."""
    lease_seconds: int
    """Cluster-slot lease lifetime between heartbeats (SCANFLEET_LEASE_SECONDS)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> FleetTuning:
        # Minting and revoking are a few API calls each, retried with backoff: 5 min margin.
        soft = settings.scan_timeout + 240
        hard = settings.scan_timeout + 300
        return cls(
            soft_time_limit=soft,
            time_limit=hard,
            visibility_timeout=settings.visibility_timeout or hard + 300,
            lease_seconds=settings.lease_seconds,
        )


def broker_tls(url: str) -> dict[str, Any] | None:
    """`broker_use_ssl` for a `rediss://` URL that names no `ssl_*` option: verify the
    server's certificate against the system CAs. None for a plain `redis://` URL or when
    the URL carries its own `ssl_*` options (kombu passes those to redis-py, whose default
    is `required`)."""
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return None
    if any(k.startswith("ssl_") for k in parse_qs(parts.query)):
        return None
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED}


def _celery(settings: Settings, tuning: FleetTuning) -> Celery:
    """A configured Celery app with no task: `create_app` registers them."""
    app = Celery("scanfleet", broker=settings.broker_url)
    vt = tuning.visibility_timeout
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=QUEUE,
        task_ignore_result=True,
        result_backend=None,
        task_soft_time_limit=tuning.soft_time_limit,
        task_time_limit=tuning.time_limit,
        broker_transport_options={
            "visibility_timeout": vt,
            # Sweep for abandoned messages often enough to honour a short visibility
            # timeout; throttle 1 makes the interval the only control.
            "unacked_restore_interval": max(1, min(10, vt // 4)),
            "unacked_restore_throttle": 1,
            # The restore mutex of a killed sweeper blocks sweeps until it expires.
            "unacked_mutex_expire": max(10, min(300, vt)),
            "socket_timeout": 30,
            "socket_connect_timeout": 10,
            "health_check_interval": 10,
        },
        broker_use_ssl=broker_tls(settings.broker_url),
        # No Celery control commands (shutdown, pool changes, rate limits) over the broker.
        worker_enable_remote_control=False,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # On a broker connection loss, keep running scans: cancelling would abort audits
        # halfway, and the redelivered copy finds the target done and records nothing twice.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        # Task events feed Flower (the compose stack's monitor); they carry task names and
        # arguments (run id, context/namespace/pod/container names), never credentials.
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    return app


def fan_out_publisher(celery: Celery) -> Callable[[str, Sequence[tuple[int, int]]], None]:
    """`submit.Publish` on this app: one fan-out message per chunk, one producer."""

    def publish(run_id: str, chunks: Sequence[tuple[int, int]]) -> None:
        with celery.producer_or_acquire() as producer:
            for start, stop in chunks:
                celery.send_task(
                    FAN_OUT_TASK, args=[run_id, start, stop], queue=QUEUE, producer=producer
                )

    return publish


def _keep_our_logging(**_kwargs: Any) -> None:
    """A receiver here stops Celery configuring logging: `scanfleet worker` already did."""


setup_logging.connect(_keep_our_logging, weak=False)


def create_app(settings: Settings, *, start_sweep: Starter | None = None) -> Celery:
    """The Celery app for these settings, with every task registered on it.

    The tasks read their settings from the app (`tasks.WorkerContext.of`), never from a
    module global. `start_sweep` replaces how a sweep tick starts its run (None: an
    ordinary fleet run published on this app, `sweeps.tick.start_sweep_run`).
    """
    from scanfleet.worker import tasks  # tasks import this module's names

    tuning = FleetTuning.from_settings(settings)
    app = _celery(settings, tuning)
    tasks.register(app, settings, tuning, start_sweep=start_sweep)
    return app


@functools.cache
def _from_environment() -> Celery:
    return create_app(Settings.from_env())


def __getattr__(name: str) -> Any:
    """`app`, built from the environment on first use, for Celery's own command line
    (`celery --app=scanfleet.worker.app flower`); scanfleet's code calls `create_app`."""
    if name == "app":
        return _from_environment()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
