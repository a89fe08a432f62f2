"""The scan of one target: `scan_target()`, which every driver runs (CLI `scan`,
`submit --local`, the Celery task).

    admin client → mint identity, read the pod with it → check the container → audit
    (on failure: was it still the same pod?) → revoke → judge

It always returns a `Scanned`: the target summary (SPEC §4) and, when the scan could not
complete, the `ScanError` behind it — never an exception for one target's failure, so one
bad target never stops the others. It writes the auditor's raw report but never the summary
and never run state: whether a failed scan is recorded or retried later is the driver's
decision (`scan` and `submit --local` record every error at once; the fleet's scan task
asks `clock.retry_delay` in `worker.tasks._retry_or_continue`). Clean-up happens inside
`identity.scan_identity`, whatever happens here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import structlog

from scanfleet.core.clock import Clock, iso, utcnow
from scanfleet.core.errors import (
    AuditorFailed,
    BadInput,
    ClusterApiError,
    InvalidReport,
    ScanError,
    ScanTimeout,
    TargetNotFound,
)
from scanfleet.core.settings import MINT_MARGIN, report_max_bytes
from scanfleet.core.targets import PodInfo, Target, scan_id_for
from scanfleet.identity.mint import scan_identity
from scanfleet.judging.documents import (
    ControlIds,
    FailedControlDoc,
    TargetSummary,
    ThresholdDoc,
    error_summary,
    failed_controls,
    scanned_summary,
    target_doc,
)
from scanfleet.judging.report import Counts, control_ids, load_report
from scanfleet.kube.client import ClientCache, KubeClient
from scanfleet.scan.auditor import Host, run_auditor
from scanfleet.scan.plan import ScanOptions
from scanfleet.store.files import make_dir, report_path

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Scanned:
    """One scan's summary, and the error that made it an error summary (if any)."""

    summary: TargetSummary
    error: ScanError | None = None


@dataclass
class _Progress:
    """What the scan learned so far; an error summary keeps the facts found before it."""

    image: str | None = None
    image_id: str | None = None
    counts: Counts | None = None
    ids: ControlIds | None = None
    cleanup: str = "complete"
    failed: list[FailedControlDoc] | None = None


def scan_target(
    clients: ClientCache,
    target: Target,
    run_id: str,
    options: ScanOptions,
    out_dir: Path,
    *,
    now: Clock = utcnow,
    host: Host,
) -> Scanned:
    """Scan one resolved target of a run; the raw report goes into `out_dir`. `host` is
    this process's side of the audit (sandbox, environment, file modes, stop event)."""
    if target.container is None:
        raise ValueError("scan_target needs a resolved target (container known)")
    scan_id = scan_id_for(run_id, target)
    started = now()
    t0 = time.monotonic()
    found = _Progress()
    error: ScanError | None = None
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
            _audit(
                _admin(clients, target),
                target,
                scan_id,
                run_id,
                options,
                out_dir,
                found,
                started,
                host,
            )
        except ScanError as e:
            error = e
        summary = _summary(
            scan_id, run_id, target, options, found, error, started, now(), time.monotonic() - t0
        )
        if error is not None:
            log.warning("scan.error", kind=error.kind, error=str(error), cleanup=found.cleanup)
        else:
            log.info(
                "scan.finished",
                compliance=summary["compliance"],
                threshold_passed=summary["threshold"]["passed"],
                cleanup=found.cleanup,
            )
    return Scanned(summary, error)


def _admin(clients: ClientCache, target: Target) -> KubeClient:
    try:
        return clients.get(target.context)
    except BadInput as e:  # the worker's kubeconfig lacks the context the submitter had
        raise ClusterApiError(str(e)) from e


def _audit(
    kube: KubeClient,
    target: Target,
    scan_id: str,
    run_id: str,
    options: ScanOptions,
    out_dir: Path,
    found: _Progress,
    started: datetime,
    host: Host,
) -> None:
    report = report_path(out_dir, scan_id)
    make_dir(out_dir, host.modes)
    report.unlink(missing_ok=True)  # a redelivered scan must not judge an old report
    identity = None
    try:
        with scan_identity(
            kube,
            target,
            scan_id,
            run_id,
            ttl=options.token_ttl,
            now=started,
            min_lifetime=options.timeout + MINT_MARGIN,
        ) as identity:
            assert identity.pod is not None  # read with the scan's token: the access check
            _check_pod(identity.pod, target, found)
            try:
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
                    host=host,
                )
            except (AuditorFailed, ScanTimeout, InvalidReport) as e:
                # Was it still the same pod? A replaced pod is not this auditor's failure.
                raise identity.target_changed() or e from None
    finally:
        if identity is not None:
            found.cleanup = identity.cleanup
    if not report.exists():
        raise InvalidReport(f"the auditor completed but wrote no report at {report.name}")
    controls = load_report(report, report_max_bytes())
    found.counts = Counts.from_controls(controls)
    found.ids = control_ids(controls)
    found.failed = failed_controls(controls)


def _check_pod(pod: PodInfo, target: Target, found: _Progress) -> None:
    """The container is a regular container of the pod, and the pod is Running."""
    container = pod.container(target.container or "")
    if container is None:
        raise TargetNotFound(
            f"container {target.container!r} is not a regular container of pod "
            f"{target.namespace}/{target.pod} in context {target.context!r} "
            f"(containers: {', '.join(c.name for c in pod.containers) or 'none'})"
        )
    found.image, found.image_id = container.image, container.image_id
    if pod.phase != "Running":
        raise TargetNotFound(
            f"pod {target.namespace}/{target.pod} is {pod.phase or 'in an unknown phase'}, "
            "not Running; nothing to exec into"
        )


def _summary(
    scan_id: str,
    run_id: str,
    target: Target,
    options: ScanOptions,
    found: _Progress,
    error: ScanError | None,
    started: datetime,
    finished: datetime,
    duration: float,
) -> TargetSummary:
    doc = target_doc(target.to_dict(), found.image, found.image_id)
    if error is not None or found.counts is None:
        return error_summary(
            scan_id=scan_id,
            run_id=run_id,
            target=doc,
            error=error or InvalidReport("the scan produced no counts"),
            started_at=iso(started),
            finished_at=iso(finished),
            duration_s=duration,
            cleanup=found.cleanup,
            profile_sha256=options.profile_sha256,
        )
    threshold: ThresholdDoc = {"passed": None, "failures": []}
    if options.threshold is not None:
        failures = options.threshold.evaluate(found.counts, found.ids or {})
        threshold = {"passed": not failures, "failures": failures}
    return scanned_summary(
        scan_id=scan_id,
        run_id=run_id,
        target=doc,
        started_at=iso(started),
        finished_at=iso(finished),
        duration_s=duration,
        cleanup=found.cleanup,
        counts=found.counts,
        ids=found.ids or {},
        threshold=threshold,
        profile_sha256=options.profile_sha256,
        failed=found.failed,
    )
