"""Retention: prune runs older than `retention_days` from the results dir and Redis.

A run's age is its run id's timestamp (`YYYYMMDDTHHMMSSZ-xxxxxx`), not a file time that a
copy or a backup restore can change. Only directories whose name is a run id are ever
removed: anything else in the results directory (a README, a mounted volume's lost+found,
an operator's notes) is left alone, as is any symlink. Redis keys go through the run
store's `delete_run` (the store owns the key layout); the store's TTL is the backstop.

The clock is injected (`now=`). Library code: it logs, it never configures logging.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import structlog

from scanfleet.core.clock import rfc3339
from scanfleet.core.errors import ScanfleetError
from scanfleet.store.files import RUN_ID_RE
from scanfleet.store.results import ResultsStore, as_results

log = structlog.get_logger(__name__)


class RunKeys(Protocol):
    """What retention needs from `scanfleet.store.RunStore`."""

    def delete_run(self, run_id: str) -> None: ...


def run_time(run_id: str) -> datetime | None:
    """The UTC creation time in a run id; None if it is not a run id."""
    if not RUN_ID_RE.fullmatch(run_id):
        return None
    try:
        return datetime.strptime(run_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:  # matches the shape but is no date (month 13)
        return None


@dataclass
class PruneReport:
    cutoff: str
    dry_run: bool
    pruned: list[str] = field(default_factory=list)
    kept: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    redis: str = "skipped"
    """`deleted` when run keys went through the store, `skipped` without a store."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "cutoff": self.cutoff,
            "dry_run": self.dry_run,
            "pruned": list(self.pruned),
            "kept": self.kept,
            "errors": dict(self.errors),
            "redis": self.redis,
        }


def run_dirs(results_dir: ResultsStore | Path) -> Iterator[tuple[str, datetime]]:
    """Runs (real directories, or object prefixes, named like a run id) with their
    creation time."""
    for run_id in as_results(results_dir).run_ids():
        t = run_time(run_id)
        if t is not None:
            yield run_id, t


def prune(
    results_dir: ResultsStore | Path,
    older_than_days: int,
    *,
    now: datetime,
    store: RunKeys | None = None,
    dry_run: bool = False,
) -> PruneReport:
    """Delete runs created before `now - older_than_days`, from disk and from Redis."""
    if older_than_days < 1:
        raise ValueError("older_than_days must be at least 1")
    cutoff = now.astimezone(UTC) - timedelta(days=older_than_days)
    report = PruneReport(
        cutoff=rfc3339(cutoff),
        dry_run=dry_run,
        redis="deleted" if store is not None and not dry_run else "skipped",
    )
    results = as_results(results_dir)
    for run_id, created in run_dirs(results):
        if created >= cutoff:
            report.kept += 1
            continue
        if dry_run:
            report.pruned.append(run_id)
            continue
        try:
            if store is not None:
                store.delete_run(run_id)  # keys first: a half-pruned run is retried
            results.delete_run(run_id)  # an object store: batched DeleteObjects
        except (OSError, ScanfleetError) as e:  # one bad run must not stop the others
            report.errors[run_id] = f"{type(e).__name__}: {e}"
            log.error("retention.prune_failed", run_id=run_id, error=report.errors[run_id])
            continue
        report.pruned.append(run_id)
        log.info("retention.pruned", run_id=run_id)
    log.info(
        "retention.finished",
        pruned=len(report.pruned),
        kept=report.kept,
        errors=len(report.errors),
        dry_run=dry_run,
    )
    return report
