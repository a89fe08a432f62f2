"""Worker metrics: Prometheus counters, gauges and histograms, and the worker's /metrics.

Owns every worker-side metric and the HTTP endpoint that serves them. Existing modules
call one function here at the point something happens (a result recorded, an identity
minted or revoked, an API request, a cluster slot taken); outside this module only beat's
`posture` and the `exporter` start-up import `prometheus_client`. kube, identity and the
store's slots import this module, so it must never import redis, celery or the store.

Prefork workers count in `prometheus_client`'s multiprocess mode: `use_multiprocess` (called
by `scanfleet.worker.exporter` before the pool forks) points `PROMETHEUS_MULTIPROC_DIR` (set and
read through settings.py) at a fresh private directory, every child writes its values
there, and the parent serves their sum (`registry()`: `MultiProcessCollector`) plus
`scanfleet_queue_messages`, read from Redis at scrape time. Metrics are created on first
use, so that switch can still happen after this module was imported.

Labels are bounded by clusters: context, phase, status, error kind, verb, code. It must
never put a pod, namespace, target, run id or anything secret into a label.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from scanfleet.core.settings import (
    prometheus_multiproc_dir,
    set_prometheus_multiproc_dir,
)

log = structlog.get_logger(__name__)
T = TypeVar("T")

DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 2700, 3600)
"""Seconds: minting and revoking take well under a second, audits seconds to an hour."""
QUEUE_PRIORITY_SEP = "\x06\x16"
"""kombu's Redis transport keeps priorities 3, 6, 9 of a queue in `<queue>\\x06\\x16<n>`."""
VERBS = ("get", "list", "create", "delete")
"""The API verbs `api_call` counts (the `verb` label); anything else counts as "other"."""


@dataclass(frozen=True)
class _Metrics:
    scans: Counter
    duration: Histogram
    api: Counter
    identities: Gauge
    cleanup_incomplete: Counter
    slots: Gauge


def _create() -> _Metrics:
    # registry=None: in multiprocess mode the parent reads the children's files; in a single
    # process `registry()` collects these objects directly.
    return _Metrics(
        scans=Counter(
            "scanfleet_scans_total",
            "Target scans recorded, by outcome.",
            ["context", "status", "error_kind"],
            registry=None,
        ),
        duration=Histogram(
            "scanfleet_scan_duration_seconds",
            "Seconds per scan phase (mint, audit, revoke) and in total.",
            ["context", "phase"],
            buckets=DURATION_BUCKETS,
            registry=None,
        ),
        api=Counter(
            "scanfleet_api_requests_total",
            "Kubernetes API requests by verb and HTTP code (2xx: any success; "
            "unreachable: no response).",
            ["context", "verb", "code"],
            registry=None,
        ),
        identities=Gauge(
            "scanfleet_identities_active",
            "Scan identities minted and not yet revoked.",
            registry=None,
            multiprocess_mode="livesum",
        ),
        cleanup_incomplete=Counter(
            "scanfleet_cleanup_incomplete",
            "Scans whose identity could not be fully revoked.",
            registry=None,
        ),
        slots=Gauge(
            "scanfleet_cluster_slots_in_use",
            "Cluster slots (leases) held.",
            ["context"],
            registry=None,
            multiprocess_mode="livesum",
        ),
    )


_lock = threading.Lock()
_metrics: _Metrics | None = None


def _m() -> _Metrics:
    global _metrics  # noqa: PLW0603 - one set per process, created on first use
    if _metrics is None:
        with _lock:
            if _metrics is None:
                _metrics = _create()
    return _metrics


METRIC_NAMES = (
    "scanfleet_scans_total",
    "scanfleet_scan_duration_seconds",
    "scanfleet_api_requests_total",
    "scanfleet_identities_active",
    "scanfleet_cleanup_incomplete_total",
    "scanfleet_cluster_slots_in_use",
    "scanfleet_queue_messages",
)
"""Every metric family a worker serves (the dashboard test checks names against these)."""


# -- hooks: one call each from the module where the thing happens --------------------------


def scan_recorded(summary: Mapping[str, Any], added: int) -> None:
    """A target result was recorded (runs.record); `added` 0 means a redelivered duplicate.

    Counts scans, not covered targets (--dedupe-images copies are no scan of their own).
    """
    if not added or summary.get("covered_by") is not None:
        return
    context = str((summary.get("target") or {}).get("context") or "")
    status = str(summary.get("status") or "error")
    err = summary.get("error")
    kind = str(err.get("kind") or "") if isinstance(err, Mapping) else ""
    m = _m()
    m.scans.labels(context, status, kind if status == "error" else "").inc()
    duration = summary.get("duration_s")
    if isinstance(duration, int | float) and duration > 0:
        m.duration.labels(context, "total").observe(float(duration))


def api_call(context: str, verb: str, fn: Callable[[], T]) -> Callable[[], T]:
    """Wrap one Kubernetes API request (kube._call) so its verb and code are counted.

    `verb` is the request's API verb, given by the adapter (one of VERBS).
    """
    verb = verb if verb in VERBS else "other"

    def counted() -> T:
        code = "2xx"
        try:
            return fn()
        except Exception as e:
            status = getattr(e, "status", None)
            code = str(status) if isinstance(status, int) and status > 0 else "unreachable"
            raise
        finally:
            _m().api.labels(context, verb, code).inc()

    return counted


class IdentityPhases:
    """The mint → audit → revoke clock of one scan identity (identity.scan_identity)."""

    def __init__(self, context: str) -> None:
        self.context = context
        self.phase = "mint"
        self.since = time.monotonic()
        self.minted_ok = False

    def _next(self, phase: str) -> None:
        now = time.monotonic()
        _m().duration.labels(self.context, self.phase).observe(now - self.since)
        self.phase, self.since = phase, now

    def minted(self) -> None:
        self._next("audit")
        self.minted_ok = True
        _m().identities.inc()

    def revoking(self) -> None:
        if self.phase != "revoke":
            self._next("revoke")

    def revoked(self, cleanup: str) -> None:
        self._next("done")
        if self.minted_ok:
            _m().identities.dec()
        if cleanup != "complete":
            _m().cleanup_incomplete.inc()


def identity_phases(kube: object) -> IdentityPhases:
    """Start the clock as minting begins; `kube` is the cluster's client (its context)."""
    return IdentityPhases(str(getattr(kube, "context", "") or ""))


def slot_acquired(context: str) -> None:
    _m().slots.labels(context).inc()


def slot_released(context: str) -> None:
    _m().slots.labels(context).dec()


# -- the worker's endpoint -------------------------------------------------------------------


class QueueCollector(Collector):
    """`scanfleet_queue_messages`: messages waiting in the Celery queue, LLEN at scrape time."""

    def __init__(self, llen: Callable[[str], int], queue: str) -> None:
        self.llen = llen
        self.queue = queue

    def collect(self) -> Iterator[GaugeMetricFamily]:
        keys = [self.queue] + [f"{self.queue}{QUEUE_PRIORITY_SEP}{p}" for p in (3, 6, 9)]
        try:
            n = sum(self.llen(k) for k in keys)
        except Exception as e:  # Redis away: leave the gauge out rather than report 0
            log.warning("metrics.queue_unreadable", error=type(e).__name__)
            return
        yield GaugeMetricFamily(
            "scanfleet_queue_messages", "Messages waiting in the scanfleet Celery queue.", value=n
        )


class _DeadChildren(Collector):
    """Before each scrape: drop the live gauges of children that died without a goodbye."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name in os.listdir(self.directory):
            if name.startswith("gauge_live"):
                pid = int(name.rsplit("_", 1)[-1].split(".")[0])
                if pid != os.getpid() and not _alive(pid):
                    multiprocess.mark_process_dead(pid, self.directory)  # type: ignore[no-untyped-call]
        yield from ()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def registry(llen: Callable[[str], int] | None = None, queue: str = "") -> CollectorRegistry:
    """What /metrics serves: the children's files summed (multiprocess) or this process."""
    reg = CollectorRegistry()
    directory = prometheus_multiproc_dir()
    if directory:
        reg.register(_DeadChildren(directory))
        multiprocess.MultiProcessCollector(reg, directory)  # type: ignore[no-untyped-call]
    else:
        m = _m()
        for metric in (m.scans, m.duration, m.api, m.identities, m.cleanup_incomplete, m.slots):
            reg.register(metric)
    if llen is not None:
        reg.register(QueueCollector(llen, queue))
    return reg


def use_multiprocess(directory: str) -> None:
    """Count into `directory` from now on (and in every child forked after this call).

    Only before the first metric is touched: values already created would stay private.
    """
    if _metrics is not None:
        raise RuntimeError("metrics were created before multiprocess mode was set up")
    set_prometheus_multiproc_dir(directory)
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
