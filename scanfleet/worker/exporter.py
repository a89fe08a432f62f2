"""The /metrics endpoints: the worker's (summed over its prefork children) and beat's.

Owns process start-up for metrics — the private multiprocess directory, the HTTP server,
the pool children's goodbye — and nothing else: what is counted lives in
`scanfleet.core.metrics` (worker) and `scanfleet.sweeps.posture` (beat). Servers listen on all
interfaces on the configured port; they serve numbers only, never a credential.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import structlog
from celery.signals import worker_process_shutdown
from prometheus_client import CollectorRegistry, multiprocess, start_http_server

from scanfleet.core import metrics
from scanfleet.core.settings import Settings, prometheus_multiproc_dir
from scanfleet.store.client import connect
from scanfleet.sweeps import posture
from scanfleet.sweeps.spec import Sweep

log = structlog.get_logger(__name__)


def prepare_worker(port: int, llen: Callable[[str], int], queue: str) -> str | None:
    """In the worker's main process, before the pool forks: count across children.

    A fresh private directory for the children's files (removed at exit), metrics switched
    to it, and /metrics served on `port`. Returns the directory; None when `port` is 0.
    """
    if port == 0:
        return None
    directory = tempfile.mkdtemp(prefix="scanfleet-metrics-")  # fresh: nothing stale
    metrics.use_multiprocess(directory)
    atexit.register(shutil.rmtree, directory, True)
    worker_process_shutdown.connect(_child_shutdown, weak=False)
    start_http_server(port, registry=metrics.registry(llen, queue))
    log.info("metrics.serving", port=port, multiprocess=True)
    return directory


def _child_shutdown(**_kwargs: Any) -> None:
    """A pool child is going away: its live gauges no longer count. (A child killed
    without this is dropped at the next scrape by `metrics._DeadChildren`.)"""
    directory = prometheus_multiproc_dir()
    if directory:
        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]


def worker_starting(settings: Settings, port: int | None = None) -> None:
    """`scanfleet worker`'s hook, before Celery starts its pool (port default: settings)."""
    from scanfleet.worker.app import QUEUE

    client = connect(settings.broker_url, retry_seconds=2)
    prepare_worker(settings.metrics_port if port is None else port, client.llen, QUEUE)


def beat_starting(settings: Settings, sweeps: list[Sweep], port: int | None = None) -> None:
    """`scanfleet beat`'s hook: serve the posture (port default: SCANFLEET_METRICS_PORT)."""
    port = settings.metrics_port if port is None else port
    if port:
        serve(port, posture.registry(settings, sweeps))


def serve(port: int, reg: CollectorRegistry) -> None:
    start_http_server(port, registry=reg)
    log.info("metrics.serving", port=port, multiprocess=False)
