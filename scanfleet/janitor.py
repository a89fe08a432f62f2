"""The janitor (SPEC §7): delete expired scan identities a clean-up missed.

A scan that was killed (OOM, node loss, SIGKILL) leaves its ServiceAccount, Role and
RoleBinding behind. For each chosen context the janitor lists those three kinds labelled
`app.kubernetes.io/managed-by: scanfleet` in every namespace and deletes the ones whose
`scanfleet.io/expires-at` annotation has passed (RoleBinding, Role, ServiceAccount order),
and says what it deleted.

It must never touch an object without that label (the list is a label-selected list, and
each object's label is checked again), never an unexpired one (the scan may still be
running), and never one whose expiry is missing or unparseable: those are reported as
warnings for a human. The clock is injected (`now=`). An error on one context is recorded
and the others are still swept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from scanfleet.errors import ScanfleetError
from scanfleet.identity import DELETE_ORDER, EXPIRES_AT, MANAGED_BY, MANAGED_SELECTOR
from scanfleet.kube import ClientCache
from scanfleet.kubeconfig import choose_contexts

log = structlog.get_logger("scanfleet.janitor")


class JanitorClient(Protocol):
    """The two calls of `scanfleet.kube.KubeClient` the janitor needs."""

    def list_labelled(self, kind: str, selector: str) -> list[dict[str, Any]]: ...

    def delete(self, kind: str, namespace: str, name: str) -> bool: ...


@dataclass(frozen=True)
class Finding:
    """One scanfleet object the janitor acted on or looked at."""

    context: str
    kind: str
    namespace: str
    name: str
    expires_at: str | None
    reason: str = ""

    @property
    def ref(self) -> str:
        return f"{self.context}: {self.kind} {self.namespace}/{self.name}"

    def to_dict(self) -> dict[str, Any]:
        d = {
            "context": self.context,
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "expires_at": self.expires_at,
        }
        if self.reason:
            d["reason"] = self.reason
        return d


@dataclass
class JanitorReport:
    dry_run: bool
    deleted: list[Finding] = field(default_factory=list)
    """Deleted (or, with dry_run, that would be deleted)."""
    warnings: list[Finding] = field(default_factory=list)
    """Labelled objects left alone because their expiry is missing or unparseable."""
    failed: list[Finding] = field(default_factory=list)
    """Expired objects whose delete failed; the next run tries again."""
    context_errors: dict[str, str] = field(default_factory=dict)
    kept: int = 0
    """Labelled objects not yet expired."""

    @property
    def ok(self) -> bool:
        return not self.context_errors and not self.failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "deleted": [f.to_dict() for f in self.deleted],
            "warnings": [f.to_dict() for f in self.warnings],
            "failed": [f.to_dict() for f in self.failed],
            "context_errors": dict(self.context_errors),
            "kept": self.kept,
            "total_deleted": len(self.deleted),
        }


def parse_expiry(value: object) -> datetime | None:
    """An RFC 3339 timestamp as an aware UTC datetime; None when missing or unparseable."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    if t.tzinfo is None:  # RFC 3339 requires an offset; guessing one could delete too early
        return None
    return t.astimezone(UTC)


def sweep_context(
    context: str,
    client: JanitorClient,
    *,
    now: datetime,
    dry_run: bool,
    report: JanitorReport,
) -> None:
    """Find and delete the expired scanfleet objects of one cluster, into `report`."""
    expired: dict[str, list[Finding]] = {kind: [] for kind in DELETE_ORDER}
    for kind in DELETE_ORDER:
        for obj in client.list_labelled(kind, MANAGED_SELECTOR):
            if (obj.get("labels") or {}).get(MANAGED_BY) != "scanfleet":
                continue  # the selector should make this impossible; never trust it to
            raw = (obj.get("annotations") or {}).get(EXPIRES_AT)
            finding = Finding(context, kind, obj["namespace"], obj["name"], raw)
            expiry = parse_expiry(raw)
            if expiry is None:
                why = "no expires-at annotation" if raw is None else "unparseable expires-at"
                warn = Finding(context, kind, obj["namespace"], obj["name"], raw, why)
                report.warnings.append(warn)
                log.warning("janitor.unknown_expiry", **warn.to_dict())
            elif expiry <= now:
                expired[kind].append(finding)
            else:
                report.kept += 1
    for kind in DELETE_ORDER:  # bindings first: the grant goes before the identity
        for f in expired[kind]:
            if dry_run:
                report.deleted.append(f)
                continue
            try:
                gone_before = not client.delete(kind, f.namespace, f.name)
            except ScanfleetError as e:
                failed = Finding(f.context, kind, f.namespace, f.name, f.expires_at, str(e))
                report.failed.append(failed)
                log.error("janitor.delete_failed", error=str(e), **f.to_dict())
                continue
            if gone_before:  # someone else (a late clean-up, another janitor) was first
                log.info("janitor.already_gone", **f.to_dict())
                continue
            report.deleted.append(f)
            log.info("janitor.deleted", **f.to_dict())


def run_janitor(
    contexts: Iterable[str],
    client_for: Callable[[str], JanitorClient],
    *,
    now: datetime,
    dry_run: bool = False,
) -> JanitorReport:
    """Sweep every context; an error on one is recorded and the others still run."""
    report = JanitorReport(dry_run=dry_run)
    for ctx in contexts:
        try:
            sweep_context(ctx, client_for(ctx), now=now, dry_run=dry_run, report=report)
        except ScanfleetError as e:
            report.context_errors[ctx] = str(e)
            log.error("janitor.context_failed", context=ctx, error=str(e))
    log.info(
        "janitor.finished",
        dry_run=dry_run,
        deleted=len(report.deleted),
        warnings=len(report.warnings),
        failed=len(report.failed),
        context_errors=len(report.context_errors),
    )
    return report


def janitor_for_kubeconfig(
    kubeconfig: str,
    contexts: list[str] | tuple[str, ...],
    all_contexts: bool,
    *,
    now: datetime,
    dry_run: bool = False,
) -> JanitorReport:
    """Resolve contexts (`--context`/`--all-contexts`/current) and sweep them.

    BadInput when the kubeconfig or a named context does not exist; a context whose
    credentials cannot be loaded is a context error, and the others still run.
    """
    chosen = choose_contexts(kubeconfig, list(contexts), all_contexts)
    clients = ClientCache(kubeconfig)
    try:
        return run_janitor(chosen, clients.get, now=now, dry_run=dry_run)
    finally:
        clients.close()
