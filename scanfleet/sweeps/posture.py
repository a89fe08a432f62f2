"""Fleet posture for Prometheus, served by `scanfleet beat`: what the last run of each sweep
found, and what the janitor cleaned up.

Everything is read at scrape time from what the runs left behind — run.json and drift.json
in the results directory, the janitor totals in Redis — never kept in memory, so a restarted
beat reports the same values. The only memory is a cache of facts that cannot change: the
`source` of a finished run, and the per-namespace compliance of a finished run.

    scanfleet_sweep_interval_seconds{sweep}                 longest gap between cron fires
    scanfleet_sweep_last_finished_timestamp_seconds{sweep}  the last finished run
    scanfleet_sweep_compliance_percent{sweep,context[,namespace]}
    scanfleet_sweep_targets{sweep,outcome}                  passed | failed | error
    scanfleet_sweep_matched_targets{sweep}                  targets discovery found (0: none)
    scanfleet_sweep_threshold_passed{sweep}                 1 / 0
    scanfleet_sweep_drift_controls{sweep,change}            regressed | fixed
    scanfleet_janitor_deleted_total{kind}, scanfleet_janitor_foreign_total

The janitor runs on the workers; `janitor_finished` adds its report to totals in Redis
(`<prefix>:metrics:janitor`) that beat serves. Labels never carry a pod or a target; a
namespace only with `SCANFLEET_METRICS_PER_NAMESPACE=1`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from scanfleet.core.errors import ResultsUnavailable
from scanfleet.core.settings import Settings
from scanfleet.identity.mint import DELETE_ORDER
from scanfleet.judging.report import Counts
from scanfleet.runs.drift import DRIFT_FILE
from scanfleet.store.client import connect
from scanfleet.store.results import (
    RUN_FILE,
    ResultsStore,
    as_results,
    iter_summaries,
    open_results,
    read_json,
)
from scanfleet.sweeps.spec import Sweep, next_fire

log = structlog.get_logger(__name__)

OUTCOMES = ("passed", "failed", "error")
INTERVAL_SAMPLES = 16
"""Cron gaps looked at for the interval: a weekday-only schedule gets its weekend gap."""
JANITOR_KEY = "metrics:janitor"

METRIC_NAMES = (
    "scanfleet_sweep_interval_seconds",
    "scanfleet_sweep_last_finished_timestamp_seconds",
    "scanfleet_sweep_compliance_percent",
    "scanfleet_sweep_targets",
    "scanfleet_sweep_matched_targets",
    "scanfleet_sweep_threshold_passed",
    "scanfleet_sweep_drift_controls",
    "scanfleet_janitor_deleted_total",
    "scanfleet_janitor_foreign_total",
)


class Hashes(Protocol):
    """What the janitor totals need from a Redis client."""

    def hgetall(self, name: str) -> Any: ...

    def hincrby(self, name: str, key: str, amount: int = 1) -> Any: ...


def interval_seconds(schedule: str, now: datetime) -> float:
    """The longest gap between consecutive fire times of a cron schedule, from `now`."""
    fires = [next_fire(schedule, now)]
    for _ in range(INTERVAL_SAMPLES):
        fires.append(next_fire(schedule, fires[-1]))
    return max((b - a).total_seconds() for a, b in pairwise(fires))


class RunIndex:
    """Finished runs in a results directory: the newest one of each sweep."""

    def __init__(self, results_dir: ResultsStore | Path) -> None:
        self.results = as_results(results_dir)
        self._sources: dict[str, str] = {}
        self._by_namespace: dict[str, dict[tuple[str, str], int]] = {}

    def latest(self, sources: set[str]) -> dict[str, str]:
        """{source: run id of its newest finished run}, for the sources asked for."""
        found: dict[str, str] = {}
        if not sources:
            return found
        names = sorted(self.results.run_ids(), reverse=True)
        present = set(names)  # forget pruned runs
        self._sources = {k: v for k, v in self._sources.items() if k in present}
        self._by_namespace = {k: v for k, v in self._by_namespace.items() if k in present}
        for run_id in names:
            source = self._source(run_id)
            if source in sources and source not in found:
                found[source] = run_id
                if len(found) == len(sources):
                    break
        return found

    def _source(self, run_id: str) -> str | None:
        if run_id in self._sources:
            return self._sources[run_id]
        try:
            source = str(read_json(self.results, run_id, RUN_FILE).get("source") or "")
        except FileNotFoundError:
            return None  # not finished yet: ask again next scrape
        except (OSError, ValueError, AttributeError, ResultsUnavailable):
            source = ""
        self._sources[run_id] = source  # a finished run's run.json does not change
        return source

    def by_namespace(self, run_id: str) -> dict[tuple[str, str], int]:
        """Compliance per (context, namespace) of a finished run, from its summaries."""
        if run_id not in self._by_namespace:
            groups: dict[tuple[str, str], Counts] = {}
            for s in iter_summaries(self.results, run_id):
                t = s.get("target") or {}
                counts = groups.setdefault(
                    (str(t.get("context")), str(t.get("namespace"))), Counts()
                )
                if s.get("status") == "completed":
                    try:
                        counts.add(Counts.from_dict(s.get("counts")))
                    except ValueError:
                        continue
            self._by_namespace[run_id] = {k: c.compliance for k, c in groups.items()}
        return self._by_namespace[run_id]


def _timestamp(text: object) -> float | None:
    try:
        t = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


class PostureCollector(Collector):
    """Beat's /metrics: the sweeps' posture and the janitor totals, read at scrape time."""

    def __init__(
        self,
        sweeps: list[Sweep],
        results_dir: ResultsStore | Path,
        redis: Hashes | None,
        prefix: str,
        *,
        per_namespace: bool = False,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.sweeps = sweeps
        self.index = RunIndex(results_dir)
        self.redis = redis
        self.key = f"{prefix}:{JANITOR_KEY}"
        self.per_namespace = per_namespace
        self.now = now

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield from self._sweeps()
        yield from self._janitor()

    def _sweeps(self) -> Iterator[GaugeMetricFamily]:
        f = {
            "interval": GaugeMetricFamily(
                "scanfleet_sweep_interval_seconds",
                "Longest gap between two scheduled runs of the sweep.",
                labels=["sweep"],
            ),
            "finished": GaugeMetricFamily(
                "scanfleet_sweep_last_finished_timestamp_seconds",
                "When the sweep's last run finished (Unix time).",
                labels=["sweep"],
            ),
            "compliance": GaugeMetricFamily(
                "scanfleet_sweep_compliance_percent",
                "Compliance of the sweep's last run per cluster (and per namespace, opt-in).",
                labels=["sweep", "context"],
            ),
            "targets": GaugeMetricFamily(
                "scanfleet_sweep_targets",
                "Targets of the sweep's last run by outcome.",
                labels=["sweep", "outcome"],
            ),
            "matched": GaugeMetricFamily(
                "scanfleet_sweep_matched_targets",
                "Targets the sweep's last run found to scan; 0: no running pod matched.",
                labels=["sweep"],
            ),
            "threshold": GaugeMetricFamily(
                "scanfleet_sweep_threshold_passed",
                "1 when no target and no fleet threshold failed in the sweep's last run.",
                labels=["sweep"],
            ),
            "drift": GaugeMetricFamily(
                "scanfleet_sweep_drift_controls",
                "Controls newly failing (regressed) or fixed since the sweep's run before.",
                labels=["sweep", "change"],
            ),
        }
        now = self.now()
        for s in self.sweeps:
            f["interval"].add_metric([s.name], interval_seconds(s.schedule, now))
        try:
            latest = self.index.latest({s.source for s in self.sweeps})
        except ResultsUnavailable as e:  # an unreachable store: no posture this scrape
            log.warning("posture.results_unavailable", error=str(e))
            latest = {}
        for s in self.sweeps:
            run_id = latest.get(s.source)
            if run_id is not None:
                try:
                    self._run(f, s.name, run_id)
                except (OSError, ValueError, AttributeError, TypeError, ResultsUnavailable) as e:
                    log.warning(
                        "posture.run_unreadable",
                        sweep=s.name,
                        run_id=run_id,
                        error=type(e).__name__,
                    )
        yield from f.values()

    def _run(self, f: Mapping[str, GaugeMetricFamily], sweep: str, run_id: str) -> None:
        run = read_json(self.index.results, run_id, RUN_FILE)
        finished = _timestamp(run.get("finished_at"))
        if finished is not None:
            f["finished"].add_metric([sweep], finished)
        for context, group in sorted((run.get("by_cluster") or {}).items()):
            f["compliance"].add_metric([sweep, context], float(group["compliance"]))
        if self.per_namespace:
            for (context, ns), value in sorted(self.index.by_namespace(run_id).items()):
                f["compliance"].add_sample(
                    f["compliance"].name,
                    {"sweep": sweep, "context": context, "namespace": ns},
                    float(value),
                )
        targets = run.get("targets") or {}
        for outcome in OUTCOMES:
            f["targets"].add_metric([sweep, outcome], float(targets.get(outcome) or 0))
        f["matched"].add_metric([sweep], float(targets.get("total") or 0))
        fleet = (run.get("fleet_threshold") or {}).get("passed")
        passed = not targets.get("failed") and fleet is not False
        f["threshold"].add_metric([sweep], 1.0 if passed else 0.0)
        try:
            drift = read_json(self.index.results, run_id, DRIFT_FILE)
        except FileNotFoundError:
            drift = None
        if drift is not None:
            totals = drift.get("totals") or {}
            f["drift"].add_metric([sweep, "regressed"], float(totals.get("newly_failing") or 0))
            f["drift"].add_metric([sweep, "fixed"], float(totals.get("fixed") or 0))

    def _janitor(self) -> Iterator[CounterMetricFamily]:
        if self.redis is None:
            return
        try:
            raw = self.redis.hgetall(self.key) or {}
        except Exception as e:  # Redis away: leave the counters out rather than report 0
            log.warning("posture.janitor_unreadable", error=type(e).__name__)
            return
        deleted = CounterMetricFamily(
            "scanfleet_janitor_deleted",
            "Expired scan objects the janitor deleted.",
            labels=["kind"],
        )
        for kind in DELETE_ORDER:
            deleted.add_metric([kind], float(raw.get(f"deleted:{kind}") or 0))
        yield deleted
        yield CounterMetricFamily(
            "scanfleet_janitor_foreign",
            "Labelled scan objects the janitor left alone (not scanfleet's shape, or expiry "
            "missing or unparseable), counted once per janitor pass that finds them.",
            value=float(raw.get("foreign") or 0),
        )


def janitor_totals(redis: Hashes, prefix: str, report: Any) -> None:
    """Add one janitor report (janitor.JanitorReport) to the totals in Redis; dry runs not."""
    if report.dry_run:
        return
    key = f"{prefix}:{JANITOR_KEY}"
    for finding in report.deleted:
        redis.hincrby(key, f"deleted:{finding.kind}", 1)
    left = len(report.warnings) + len(report.foreign)
    if left:
        redis.hincrby(key, "foreign", left)


def janitor_finished(report: Any) -> None:
    """Hook for the janitor task on a worker: count its report where beat can read it."""
    settings = Settings.from_env()
    try:
        janitor_totals(connect(settings.broker_url, retry_seconds=10), settings.key_prefix, report)
    except Exception as e:  # a lost count never fails the janitor
        log.warning("posture.janitor_not_counted", error=type(e).__name__)


def registry(settings: Settings, sweeps: list[Sweep]) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(
        PostureCollector(
            sweeps,
            open_results(None, settings),
            connect(settings.broker_url, retry_seconds=2),
            settings.key_prefix,
            per_namespace=settings.metrics_per_namespace,
        )
    )
    return reg
