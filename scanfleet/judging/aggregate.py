"""Run aggregation: target summaries in, the judged run summary (run.json's body) out.

Streaming: `Aggregator.add` folds one summary into running sums and maps keyed by cluster,
namespace, image and control id, so memory grows with the number of distinct keys, never
with the number of targets. A malformed summary is counted as a target that could not be
scanned; it never stops the aggregation of the others. `error_targets` carries each error's
kind and a short sanitized first line (`error_line`), never the whole message: stderr a
hostile container may shape lives in the target summary only. Pure domain, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from scanfleet.core.errors import ExitCode
from scanfleet.core.textsafe import strip_controls
from scanfleet.judging.documents import Outcome, RunResult, ThresholdDoc, failed_controls_of, judge
from scanfleet.judging.report import SEVERITIES, STATUSES, Counts
from scanfleet.judging.thresholds import FleetThreshold

TOP_FAILING = 20
MAX_TARGET_REFS = 100
MAX_FAILURES_PER_REF = 20
MAX_ERROR_LINE = 240
MAX_CONTROLS_PER_REF = 20
"""Failed controls named on one `failing_targets` ref (id, title, severity)."""
_SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}  # critical first


def exit_code(
    *,
    failed_targets: int,
    error_targets: int,
    fleet_passed: bool | None = None,
    errors_bounded: bool = False,
) -> int:
    """SPEC §5: 1 a threshold failed; 3 a scan could not complete (unless a fleet threshold
    bounding `targets.error` judged the errors); else 0."""
    if failed_targets > 0 or fleet_passed is False:
        return int(ExitCode.THRESHOLD)
    if error_targets > 0 and not errors_bounded:
        return int(ExitCode.SCAN_ERROR)
    return int(ExitCode.OK)


def error_line(message: object) -> str:
    """run.json's short form of a target's error message: its first line, without escapes
    or controls, at most MAX_ERROR_LINE characters. The full message (for an auditor that
    failed: its sanitized stderr tail, container-derived text) stays in the target summary."""
    first = str(message or "").strip().split("\n", 1)[0]
    line = " ".join(strip_controls(first, keep_newlines=False).split())
    return line if len(line) <= MAX_ERROR_LINE else line[: MAX_ERROR_LINE - 1] + "…"


class _Group:
    """Targets and summed counts of one cluster, namespace or image."""

    __slots__ = ("counts", "targets")

    def __init__(self) -> None:
        self.targets = dict.fromkeys(("total", "completed", "error", "passed", "failed"), 0)
        self.counts = Counts()

    def add(self, outcome: str, counts: Counts | None) -> None:
        self.targets["total"] += 1
        self.targets["error" if outcome == "error" else "completed"] += 1
        if outcome != "error":
            self.targets[outcome] += 1
        if counts is not None:
            self.counts.add(counts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "targets": dict(self.targets),
            "counts": self.counts.to_dict(),
            "compliance": self.counts.compliance,
        }


def _ref(summary: Mapping[str, Any]) -> dict[str, Any]:
    target = summary.get("target")
    target = target if isinstance(target, Mapping) else {}
    ref: dict[str, Any] = {"scan_id": summary.get("scan_id")}
    for key in ("context", "namespace", "pod", "container"):
        ref[key] = target.get(key)
    return ref


def _sort_key(ref: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(str(ref.get(k) or "") for k in ("context", "namespace", "pod", "container"))


class _BoundedRefs:
    """The first `limit` target refs in target order, kept in bounded memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: list[dict[str, Any]] = []

    def add(self, ref: dict[str, Any]) -> None:
        self.items.append(ref)
        if len(self.items) >= 2 * self.limit:
            self.items = sorted(self.items, key=_sort_key)[: self.limit]

    def result(self) -> list[dict[str, Any]]:
        return sorted(self.items, key=_sort_key)[: self.limit]


class Aggregator:
    """Folds target summaries (SPEC §4 plus `controls`) into the run summary."""

    def __init__(self) -> None:
        self.all = _Group()
        self.by_cluster: dict[str, _Group] = {}
        self.by_namespace: dict[str, _Group] = {}
        self.by_image: dict[str, _Group] = {}
        self.ids: dict[str, dict[str, set[str]]] = {
            s: {v: set() for v in SEVERITIES} for s in STATUSES
        }
        self.failing: dict[str, list[int]] = {}  # control id -> [severity rank, targets]
        self.titles: dict[str, str] = {}  # control id -> its first title seen
        self.failing_images: dict[str, set[str]] = {}  # control id -> images failing it
        self.failing_targets = _BoundedRefs(MAX_TARGET_REFS)
        self.error_targets = _BoundedRefs(MAX_TARGET_REFS)

    def add(self, summary: Mapping[str, Any]) -> None:
        """Fold one target summary in, as `summaries.judge` rules it."""
        verdict = judge(summary)
        if verdict.outcome is Outcome.ERROR:
            ref = _ref(summary)
            err = verdict.error or {}
            ref["error"] = {"kind": err.get("kind"), "message": error_line(err.get("message"))}
            self.error_targets.add(ref)
        target = summary.get("target")
        target = target if isinstance(target, Mapping) else {}
        if verdict.outcome is not Outcome.ERROR:
            self._add_ids(verdict.ids or {})
            detail = self._add_detail(summary, target)
            if verdict.outcome is Outcome.FAILED:
                ref = _ref(summary)
                ref["failures"] = list(verdict.failures)[:MAX_FAILURES_PER_REF]
                ref["failed_controls"] = [
                    {k: c[k] for k in ("id", "title", "severity")}
                    for c in detail[:MAX_CONTROLS_PER_REF]
                ]
                ref["failed_controls_total"] = len(detail)
                self.failing_targets.add(ref)
        self.all.add(verdict.outcome, verdict.counts)
        image = target.get("image") or target.get("image_id")
        for groups, key in (
            (self.by_cluster, target.get("context")),
            (self.by_namespace, target.get("namespace")),
            (self.by_image, image),
        ):
            groups.setdefault(str(key) if key is not None else "", _Group()).add(
                verdict.outcome, verdict.counts
            )

    def _add_ids(self, ids: Mapping[str, Mapping[str, Iterable[str]]]) -> None:
        for status, by_sev in ids.items():
            for sev, bucket in by_sev.items():
                self.ids[status][sev].update(bucket)
        for sev, bucket in ids.get("failed", {}).items():
            rank = _SEVERITY_RANK[sev]
            for cid in set(bucket):
                entry = self.failing.setdefault(cid, [rank, 0])
                entry[0] = min(entry[0], rank)  # the most severe seen
                entry[1] += 1

    def _add_detail(
        self, summary: Mapping[str, Any], target: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """Titles and failing images of the summary's failed controls; its detail back."""
        detail = failed_controls_of(summary)
        image = target.get("image_id") or target.get("image")
        for c in detail:
            if c["title"] is not None:
                self.titles.setdefault(c["id"], c["title"])
            if image:
                self.failing_images.setdefault(c["id"], set()).add(str(image))
        return detail

    def _top_failing(self) -> list[dict[str, Any]]:
        ranked = sorted(self.failing.items(), key=lambda kv: (-kv[1][1], kv[1][0], kv[0]))
        return [
            {
                "id": cid,
                "severity": SEVERITIES[rank],
                "targets": n,
                "title": self.titles.get(cid),
                "images": len(self.failing_images.get(cid, ())),
            }
            for cid, (rank, n) in ranked[:TOP_FAILING]
        ]

    def result(self, fleet_threshold: FleetThreshold | None = None) -> RunResult:
        """The run summary fields computed from everything added so far."""
        targets = dict(self.all.targets)
        fleet: ThresholdDoc = {"passed": None, "failures": []}
        if fleet_threshold is not None:
            failures = fleet_threshold.evaluate(self.all.counts, self.ids, targets)
            fleet = {"passed": not failures, "failures": failures}
        return {
            "targets": targets,
            "counts": self.all.counts.to_dict(),
            "compliance": self.all.counts.compliance,
            "by_cluster": {k: g.to_dict() for k, g in sorted(self.by_cluster.items())},
            "by_namespace": {k: g.to_dict() for k, g in sorted(self.by_namespace.items())},
            "by_image": {k: g.to_dict() for k, g in sorted(self.by_image.items())},
            "top_failing_controls": self._top_failing(),
            "failing_targets": self.failing_targets.result(),
            "error_targets": self.error_targets.result(),
            "fleet_threshold": fleet,
            "exit_code": exit_code(
                failed_targets=targets["failed"],
                error_targets=targets["error"],
                fleet_passed=fleet["passed"],
                errors_bounded=fleet_threshold is not None and fleet_threshold.bounds_errors,
            ),
        }
