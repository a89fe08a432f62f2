"""The scan of one target: the service every entry point calls (CLI `scan`, `submit
--local`, the Celery task).

    check the pod and container → mint identity → audit → judge → revoke → summary

It always returns a target summary (SPEC §4) for a resolved target: a scan that could not
complete is a summary with `status: "error"` and an `error.kind`, never an exception — so
one bad target never stops the others. Only `ScanInterrupted` is re-raised after the summary
is written, so the caller can stop too. Clean-up happens inside `scan_identity`, whatever
happens here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import structlog

from scanfleet.auditor import run_auditor
from scanfleet.clock import Clock, iso, utcnow
from scanfleet.credentials import scan_identity
from scanfleet.errors import (
    ClusterUnavailable,
    InvalidReport,
    ScanError,
    ScanInterrupted,
    TargetNotFound,
)
from scanfleet.inspec import Counts, control_ids, load_report
from scanfleet.kube import KubeClient
from scanfleet.plan import ScanOptions
from scanfleet.results import report_path, summary_path, write_json
from scanfleet.summaries import (
    TargetSummary,
    ThresholdDoc,
    error_summary,
    scanned_summary,
    target_doc,
)
from scanfleet.targets import Target, scan_id_for

log = structlog.get_logger("scanfleet.scan")

@dataclass
class TargetFacts:
    """What the API told us about the target container (image, image id)."""

    image: str | None = None
    image_id: str | None = None


@dataclass
class _Outcome:
    counts: Counts | None = None
    ids: dict[str, dict[str, list[str]]] | None = None
    error: ScanError | None = None
    cleanup: str = "complete"
    facts: TargetFacts = field(default_factory=TargetFacts)


def run_scan(
    kube: KubeClient,
    target: Target,
    run_id: str,
    options: ScanOptions,
    out_dir: Path,
    *,
    now: Clock = utcnow,
) -> TargetSummary:
    """Scan one resolved target and write its summary (and raw report) into `out_dir`."""
    if target.container is None:
        raise ValueError("run_scan needs a resolved target (container known)")
    scan_id = scan_id_for(run_id, target)
    started = now()
    t0 = time.monotonic()
    outcome = _Outcome()
    interrupted: ScanInterrupted | None = None
    with structlog.contextvars.bound_contextvars(
        run_id=run_id,
        scan_id=scan_id,
        context=target.context,
        namespace=target.namespace,
        pod=target.pod,
        container=target.container,
    ):
        log.info("scan.started", profile=options.profile)
        try:
            _scan(kube, target, scan_id, run_id, options, out_dir, outcome, started)
        except ScanInterrupted as e:
            interrupted = e
            outcome.error = e
        except ClusterUnavailable as e:
            if options.defer_unavailable:
                log.warning("scan.deferred", error=str(e), cleanup=outcome.cleanup)
                raise  # identity already revoked; the redelivered scan starts afresh
            outcome.error = e
        except ScanError as e:
            outcome.error = e
        summary = _summary(
            scan_id, run_id, target, options, outcome, started, now(), time.monotonic() - t0
        )
        write_json(summary_path(out_dir, scan_id), summary)
        if outcome.error is not None:
            log.warning(
                "scan.error",
                kind=outcome.error.kind,
                error=str(outcome.error),
                cleanup=outcome.cleanup,
            )
        else:
            log.info(
                "scan.finished",
                compliance=summary["compliance"],
                threshold_passed=summary["threshold"]["passed"],
                cleanup=outcome.cleanup,
            )
    if interrupted is not None:
        raise interrupted
    return summary


def _scan(
    kube: KubeClient,
    target: Target,
    scan_id: str,
    run_id: str,
    options: ScanOptions,
    out_dir: Path,
    outcome: _Outcome,
    started: datetime,
) -> None:
    assert target.container is not None
    pod = kube.read_pod(target.namespace, target.pod)
    container = pod.container(target.container)
    if container is None:
        raise TargetNotFound(
            f"container {target.container!r} is not a regular container of pod "
            f"{target.namespace}/{target.pod} in context {target.context!r} "
            f"(containers: {', '.join(c.name for c in pod.containers) or 'none'})"
        )
    outcome.facts = TargetFacts(container.image, container.image_id)
    if pod.phase != "Running":
        raise TargetNotFound(
            f"pod {target.namespace}/{target.pod} is {pod.phase or 'in an unknown phase'}, "
            "not Running; nothing to exec into"
        )
    report = report_path(out_dir, scan_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    report.unlink(missing_ok=True)  # a redelivered scan must not judge an old report
    identity = None
    try:
        with scan_identity(
            kube, target, scan_id, run_id, ttl=options.token_ttl, now=started
        ) as identity:
            run_auditor(
                options.auditor,
                options.profile,
                target,
                report,
                identity.kubeconfig,
                input_files=options.input_files,
                extra_args=options.extra_args,
                timeout=options.timeout,
                kill_grace=options.kill_grace,
            )
    finally:
        if identity is not None:
            outcome.cleanup = identity.cleanup
    if not report.exists():
        raise InvalidReport(f"the auditor completed but wrote no report at {report.name}")
    controls = load_report(report)
    outcome.counts = Counts.from_controls(controls)
    outcome.ids = control_ids(controls)


def _summary(
    scan_id: str,
    run_id: str,
    target: Target,
    options: ScanOptions,
    outcome: _Outcome,
    started: datetime,
    finished: datetime,
    duration: float,
) -> TargetSummary:
    doc = target_doc(target.to_dict(), outcome.facts.image, outcome.facts.image_id)
    if outcome.error is not None or outcome.counts is None:
        error = outcome.error or InvalidReport("the scan produced no counts")
        return error_summary(
            scan_id=scan_id, run_id=run_id, target=doc, error=error, started_at=iso(started),
            finished_at=iso(finished), duration_s=duration, cleanup=outcome.cleanup,
        )
    threshold: ThresholdDoc = {"passed": None, "failures": []}
    if options.threshold is not None:
        failures = options.threshold.evaluate(outcome.counts, outcome.ids or {})
        threshold = {"passed": not failures, "failures": failures}
    return scanned_summary(
        scan_id=scan_id, run_id=run_id, target=doc, started_at=iso(started),
        finished_at=iso(finished), duration_s=duration, cleanup=outcome.cleanup,
        counts=outcome.counts, ids=outcome.ids or {}, threshold=threshold,
    )
