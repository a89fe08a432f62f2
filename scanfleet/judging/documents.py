"""The JSON documents of a run, typed, and the one rule that judges a target summary.

Owns: the shapes of the target summary (SPEC §4), run.json, drift.json and the stored run
plan; the `str` enums of target status, run state and outcome; the only builders of a
target summary (`scanned_summary`, `error_summary`, `covered_summary`,
`unreadable_summary`); and `judge()` — passed / failed / error for one summary — which
run.json's aggregation, every report format, `status` and drift all call.

Pure: no I/O, no clock of its own, no logging. It must never grow a second outcome rule:
whatever reads a summary back asks `judge()`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NotRequired, TypedDict

from scanfleet.core.errors import ErrorKind, ScanError
from scanfleet.judging.report import SEVERITIES, STATUSES, Control, Counts

ControlIds = dict[str, dict[str, list[str]]]
"""{status: {severity: [control id, ...]}} of one target (the summary's `controls`)."""

MAX_MESSAGE = 500
"""Characters kept of a failed control's message in a summary (auditor output, can be long)."""
MAX_FIX = 4000
"""Characters kept of a failed control's fix text (a STIG fix runs to a page)."""


class TargetStatus(StrEnum):
    COMPLETED = "completed"
    ERROR = "error"


class RunPhase(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"


class Outcome(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"


class TargetDoc(TypedDict):
    context: str
    namespace: str
    pod: str
    container: str | None
    image: str | None
    image_id: str | None


class ErrorDoc(TypedDict):
    kind: str
    message: str


class FailedControlDoc(TypedDict):
    """One failed control of a target (the summary's `failed_controls`)."""

    id: str
    title: str | None
    severity: str
    impact: float
    message: str | None
    fix: str | None


class ThresholdDoc(TypedDict):
    passed: bool | None
    failures: list[str]


class TargetSummary(TypedDict):
    """`DIR/<run_id>/<scan_id>.json` (SPEC §4)."""

    scan_id: str
    run_id: str
    target: TargetDoc
    status: str
    error: ErrorDoc | None
    covered_by: str | None
    started_at: str
    finished_at: str
    duration_s: float
    counts: dict[str, dict[str, int]] | None
    compliance: int | None
    threshold: ThresholdDoc
    cleanup: str
    controls: ControlIds | None
    profile_sha256: str | None
    """The run's pinned profile digest (a URL profile), else None."""
    failed_controls: NotRequired[list[FailedControlDoc]]
    """Each failed control with title, severity, message and fix; [] for an error target.
    Summaries written before this field existed lack it: readers use `.get`."""


class RunResult(TypedDict):
    """What `Aggregator.result()` computes from a run's target summaries."""

    targets: dict[str, int]
    counts: dict[str, dict[str, int]]
    compliance: int
    by_cluster: dict[str, Any]
    by_namespace: dict[str, Any]
    by_image: dict[str, Any]
    top_failing_controls: list[dict[str, Any]]
    failing_targets: list[dict[str, Any]]
    error_targets: list[dict[str, Any]]
    fleet_threshold: ThresholdDoc
    exit_code: int


class RunDocument(RunResult):
    """`DIR/<run_id>/run.json` (SPEC §5): the run's identity plus `Aggregator.result()`."""

    run_id: str
    source: str
    profile: str
    created_at: str
    finished_at: str
    sandbox: str | None
    profile_sha256: str | None
    threshold_applied: NotRequired[bool]
    note: NotRequired[str]
    error: NotRequired[dict[str, str]]
    """Set when the results store refused writes or reads: `kind` `results_unwritable`."""


class DriftChanges(TypedDict):
    """What changed between two sets of target summaries (`drift.diff_summaries`)."""

    changed: list[dict[str, Any]]
    appeared: list[dict[str, Any]]
    disappeared: list[dict[str, Any]]
    totals: dict[str, int]


class DriftDocument(DriftChanges):
    """`DIR/<run_id>/drift.json` of a sweep run (and `scanfleet diff --json`)."""

    source: NotRequired[str]
    run_a: str | None
    run_b: str
    note: NotRequired[str]


class PlanDocument(TypedDict):
    """A RunPlan as stored in Redis and read by the workers: names, never credentials."""

    run_id: str
    source: str
    profile: str
    created_at: str
    threshold: Mapping[str, Any] | None
    threshold_source: str
    fleet_threshold: Mapping[str, Any] | None
    fleet_threshold_source: str
    input_files: list[str]
    extra_args: list[str]
    token_ttl: int
    timeout: float
    auditor: str
    dedupe_images: bool
    extra: Mapping[str, Any]
    profile_sha256: str | None


def target_doc(
    target: Mapping[str, Any], image: str | None = None, image_id: str | None = None
) -> TargetDoc:
    return {
        "context": str(target["context"]),
        "namespace": str(target["namespace"]),
        "pod": str(target["pod"]),
        "container": target.get("container"),
        "image": image,
        "image_id": image_id,
    }


def error_doc(error: ScanError | Mapping[str, Any]) -> ErrorDoc:
    if isinstance(error, ScanError):
        return {"kind": str(error.kind), "message": str(error)}
    return {"kind": str(error.get("kind")), "message": str(error.get("message"))}


def _clip(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def failed_controls(controls: Iterable[Control]) -> list[FailedControlDoc]:
    """The failed controls' detail, most severe first, then by id; texts clipped."""
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    failed = sorted(
        (c for c in controls if c.status == "failed"), key=lambda c: (rank[c.severity], c.id)
    )
    return [
        {
            "id": c.id,
            "title": c.title,
            "severity": c.severity,
            "impact": c.impact,
            "message": _clip(c.message, MAX_MESSAGE),
            "fix": _clip(c.fix, MAX_FIX),
        }
        for c in failed
    ]


def scanned_summary(
    *,
    scan_id: str,
    run_id: str,
    target: TargetDoc,
    started_at: str,
    finished_at: str,
    duration_s: float,
    cleanup: str,
    counts: Counts,
    ids: ControlIds,
    threshold: ThresholdDoc,
    profile_sha256: str | None = None,
    failed: list[FailedControlDoc] | None = None,
) -> TargetSummary:
    """A completed scan: its counts, control ids, threshold verdict and failed controls."""
    return {
        "scan_id": scan_id,
        "run_id": run_id,
        "target": target,
        "status": TargetStatus.COMPLETED,
        "error": None,
        "covered_by": None,
        "started_at": started_at,
        "finished_at": finished_at,
        "duration_s": round(duration_s, 3),
        "counts": counts.to_dict(),
        "compliance": counts.compliance,
        "threshold": threshold,
        "cleanup": cleanup,
        "controls": ids,
        "profile_sha256": profile_sha256,
        "failed_controls": failed or [],
    }


def error_summary(
    *,
    scan_id: str,
    run_id: str,
    target: TargetDoc,
    error: ScanError | Mapping[str, Any],
    started_at: str,
    finished_at: str | None = None,
    duration_s: float = 0.0,
    cleanup: str = "complete",
    profile_sha256: str | None = None,
) -> TargetSummary:
    """A target that could not be scanned (before, during or after its audit)."""
    return {
        "scan_id": scan_id,
        "run_id": run_id,
        "target": target,
        "status": TargetStatus.ERROR,
        "error": error_doc(error),
        "covered_by": None,
        "started_at": started_at,
        "finished_at": finished_at or started_at,
        "duration_s": round(duration_s, 3),
        "counts": None,
        "compliance": None,
        "threshold": {"passed": None, "failures": []},
        "cleanup": cleanup,
        "controls": None,
        "profile_sha256": profile_sha256,
        "failed_controls": [],
    }


def covered_summary(summary: TargetSummary, scan_id: str, target: TargetDoc) -> TargetSummary:
    """--dedupe-images: the covering scan's result, with the covered target's own identity."""
    covered = summary.copy()
    covered["scan_id"] = scan_id
    covered["target"] = target
    covered["covered_by"] = summary["scan_id"]
    return covered


def unreadable_summary(scan_id: str, problem: str) -> dict[str, Any]:
    """Stands in for a summary file that cannot be read, so the target shows as an error."""
    return {
        "scan_id": scan_id,
        "target": {},
        "status": TargetStatus.ERROR,
        "error": {"kind": ErrorKind.INVALID_REPORT, "message": problem},
        "covered_by": None,
        "duration_s": 0.0,
        "counts": None,
        "compliance": None,
        "threshold": {"passed": None, "failures": []},
    }


@dataclass(frozen=True)
class Verdict:
    """What `judge()` decided about one target summary."""

    outcome: Outcome
    counts: Counts | None = None
    """The counts of a completed, well-formed summary; None otherwise."""
    ids: ControlIds | None = None
    """Its control ids by status and severity ({} when the summary lists none)."""
    error: Mapping[str, Any] | None = None
    """Why it is an error: the summary's own error, or what is malformed in it."""
    failures: Sequence[str] = ()
    """The threshold checks it missed (outcome failed)."""


def judge(summary: Mapping[str, Any]) -> Verdict:
    """THE outcome rule: passed, failed or error for one target summary.

    A completed summary whose counts or controls are malformed is an error
    (`invalid_report`), never a pass; a completed one whose threshold says `passed: false`
    failed; any other completed one passed. Everything that is not completed is an error.
    """
    if summary.get("status") != TargetStatus.COMPLETED:
        err = summary.get("error")
        err = err if isinstance(err, Mapping) else {}
        found = {"kind": err.get("kind"), "message": err.get("message")}
        return Verdict(Outcome.ERROR, error=found)
    try:
        counts = Counts.from_dict(summary.get("counts"))
        ids = control_ids_of(summary.get("controls"))
    except ValueError as e:
        bad = {"kind": ErrorKind.INVALID_REPORT, "message": f"bad summary: {e}"}
        return Verdict(Outcome.ERROR, error=bad)
    threshold = summary.get("threshold")
    threshold = threshold if isinstance(threshold, Mapping) else {}
    if threshold.get("passed") is False:
        failures = [str(f) for f in threshold.get("failures") or []]
        return Verdict(Outcome.FAILED, counts, ids, failures=failures)
    return Verdict(Outcome.PASSED, counts, ids)


def outcome(summary: Mapping[str, Any]) -> Outcome:
    return judge(summary).outcome


def failed_controls_of(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A summary's `failed_controls` as read back: entries without a string id are dropped,
    texts that are not strings become None, an unknown severity becomes "none". An older
    summary without the field gives its failed ids from `controls`, titles unknown."""
    found = summary.get("failed_controls")
    out: list[dict[str, Any]] = []
    if isinstance(found, list):
        for c in found:
            if not isinstance(c, Mapping) or not isinstance(c.get("id"), str):
                continue
            sev = c.get("severity")
            out.append(
                {
                    "id": c["id"],
                    "title": c.get("title") if isinstance(c.get("title"), str) else None,
                    "severity": sev if sev in SEVERITIES else "none",
                    "message": c.get("message") if isinstance(c.get("message"), str) else None,
                    "fix": c.get("fix") if isinstance(c.get("fix"), str) else None,
                }
            )
        return out
    try:
        ids = control_ids_of(summary.get("controls"))
    except ValueError:
        return []
    for sev in SEVERITIES:
        for cid in sorted(ids.get("failed", {}).get(sev, [])):
            out.append({"id": cid, "title": None, "severity": sev, "message": None, "fix": None})
    return out


def control_ids_of(controls: object) -> ControlIds:
    """A summary's `controls`, validated; ValueError naming what is malformed."""
    if controls is None:
        return {}
    if not isinstance(controls, Mapping):
        raise ValueError("controls must be an object")
    out: ControlIds = {}
    for status, by_sev in controls.items():
        if status not in STATUSES or not isinstance(by_sev, Mapping):
            raise ValueError(f"controls: unknown or malformed status {status!r}")
        for sev, ids in by_sev.items():
            if sev not in SEVERITIES or not isinstance(ids, list):
                raise ValueError(f"controls: malformed {status}.{sev}")
            out.setdefault(status, {})[sev] = [str(i) for i in ids]
    return out
