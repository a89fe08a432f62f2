"""The janitor (SPEC §7): delete the scan identities a clean-up missed — and only those.

A scan that was killed (OOM, node loss, SIGKILL) leaves its ServiceAccount, and, until the
garbage collector catches up, its Role and RoleBinding behind. For each chosen context the
janitor lists those three kinds labelled `app.kubernetes.io/managed-by: scanfleet` in every
namespace and deletes, RoleBinding, Role, ServiceAccount in that order, the ones that are
scanfleet's and whose `scanfleet.io/expires-at` has passed — or, run by a fleet worker, whose
scan is a fleet scan that holds no live cluster-slot lease and that are older than
`EarlyRevoke.min_age` (revoked early, without waiting for the expiry).

"Scanfleet's" is `identity.not_ours`: the name, labels, owner, and the exact shape of the
rules and binding. A labelled object that fails it is reported as foreign and never deleted,
whoever labelled it. Every delete carries the listed object's UID as precondition: an object
replaced between the list and the delete (409) is reported as changed and left alone.
An ownerless Role or RoleBinding (its ServiceAccount gone) is judged like any other.
It never touches an unexpired object of a running scan, nor one whose expiry is missing or
unparseable (a warning for a human). The clock is injected (`now=`). An error on one context
is recorded and the others are still swept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog

from scanfleet.core.errors import ObjectChanged, ScanfleetError
from scanfleet.identity.mint import (
    DELETE_ORDER,
    EXPIRES_AT,
    MANAGED_BY,
    MANAGED_SELECTOR,
    RUN_ID_LABEL,
    SCAN_ID_LABEL,
    not_ours,
)
from scanfleet.kube.client import ClientCache
from scanfleet.kube.kubeconfig import choose_contexts

log = structlog.get_logger(__name__)


class JanitorClient(Protocol):
    """The two calls of `scanfleet.kube.client.KubeClient` the janitor needs."""

    def list_labelled(self, kind: str, selector: str) -> list[dict[str, Any]]: ...

    def delete(
        self,
        kind: str,
        namespace: str,
        name: str,
        *,
        uid: str | None = None,
        background: bool = False,
    ) -> bool: ...


class Leases(Protocol):
    """Who holds a live cluster-slot lease (`scanfleet.store.slots.RedisSlots`)."""

    def holders(self, context: str) -> list[str]: ...


@dataclass(frozen=True)
class EarlyRevoke:
    """Revoke a fleet scan's identity before its expiry once its scan is surely not running.

    `fleet_run(run_id)`: the run is the fleet's (its scans hold leases while they run; a
    CLI scan holds none and is never revoked early). `min_age`: an identity younger than
    this is left alone (its scan may be between minting and its first heartbeat).
    """

    leases: Leases
    fleet_run: Callable[[str], bool]
    min_age: timedelta = timedelta(minutes=5)


@dataclass(frozen=True)
class Finding:
    """One scanfleet object the janitor acted on or looked at."""

    context: str
    kind: str
    namespace: str
    name: str
    expires_at: str | None
    reason: str = ""
    uid: str | None = None

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
        if self.uid:
            d["uid"] = self.uid
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
    foreign: list[Finding] = field(default_factory=list)
    """Labelled objects that are not scanfleet's shape: never deleted, for a human."""
    changed: list[Finding] = field(default_factory=list)
    """Objects replaced between the list and the delete (409 on the UID): left alone."""

    @property
    def ok(self) -> bool:
        return not self.context_errors and not self.failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "deleted": [f.to_dict() for f in self.deleted],
            "warnings": [f.to_dict() for f in self.warnings],
            "failed": [f.to_dict() for f in self.failed],
            "foreign": [f.to_dict() for f in self.foreign],
            "changed": [f.to_dict() for f in self.changed],
            "context_errors": dict(self.context_errors),
            "kept": self.kept,
            "total_deleted": len(self.deleted),
            "total_foreign": len(self.foreign),
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
    early: EarlyRevoke | None = None,
) -> None:
    """Find and delete the expired scanfleet objects of one cluster, into `report`."""
    due: dict[str, list[Finding]] = {kind: [] for kind in DELETE_ORDER}
    idle = _Idle(context, early, now)
    for kind in DELETE_ORDER:
        for obj in client.list_labelled(kind, MANAGED_SELECTOR):
            if (obj.get("labels") or {}).get(MANAGED_BY) != "scanfleet":
                continue  # the selector should make this impossible; never trust it to
            found = _judge(context, kind, obj, now, idle, report)
            if found is not None:
                due[kind].append(found)
    for kind in DELETE_ORDER:  # bindings first: the grant goes before the identity
        for f in due[kind]:
            _delete(client, f, dry_run, report)


class _Idle:
    """Whether an unexpired identity may be revoked early (EarlyRevoke), per context."""

    def __init__(self, context: str, early: EarlyRevoke | None, now: datetime) -> None:
        self.context, self.early, self.now = context, early, now
        self._held: set[str] | None = None

    def __call__(self, obj: dict[str, Any]) -> bool:
        early = self.early
        created = parse_expiry(obj.get("created"))
        labels = obj.get("labels") or {}
        if early is None or created is None or created > self.now - early.min_age:
            return False
        if self._held is None:
            self._held = set(early.leases.holders(self.context))
        return labels.get(SCAN_ID_LABEL) not in self._held and early.fleet_run(
            str(labels.get(RUN_ID_LABEL) or "")
        )


def _judge(
    context: str, kind: str, obj: dict[str, Any], now: datetime, idle: _Idle, report: JanitorReport
) -> Finding | None:
    """The finding to delete, or None (reported as foreign, a warning, or kept)."""
    raw = (obj.get("annotations") or {}).get(EXPIRES_AT)
    ns, name, uid = obj["namespace"], obj["name"], obj.get("uid")
    why = not_ours(obj | {"kind": kind})
    if why is not None:
        foreign = Finding(context, kind, ns, name, raw, f"not scanfleet's: {why}", uid)
        report.foreign.append(foreign)
        log.warning("janitor.not_ours", **foreign.to_dict())
        return None
    expiry = parse_expiry(raw)
    if expiry is None:
        why = "no expires-at annotation" if raw is None else "unparseable expires-at"
        warn = Finding(context, kind, ns, name, raw, why, uid)
        report.warnings.append(warn)
        log.warning("janitor.unknown_expiry", **warn.to_dict())
        return None
    if expiry <= now:
        return Finding(context, kind, ns, name, raw, "expired", uid)
    if idle(obj):
        return Finding(context, kind, ns, name, raw, "its fleet scan holds no live lease", uid)
    report.kept += 1
    return None


def _delete(client: JanitorClient, f: Finding, dry_run: bool, report: JanitorReport) -> None:
    if dry_run:
        report.deleted.append(f)
        return
    try:
        gone_before = not client.delete(f.kind, f.namespace, f.name, uid=f.uid)
    except ObjectChanged as e:
        changed = Finding(f.context, f.kind, f.namespace, f.name, f.expires_at, str(e), f.uid)
        report.changed.append(changed)
        log.warning("janitor.changed", **changed.to_dict())
        return
    except ScanfleetError as e:
        failed = Finding(f.context, f.kind, f.namespace, f.name, f.expires_at, str(e), f.uid)
        report.failed.append(failed)
        log.error("janitor.delete_failed", **failed.to_dict())
        return
    if gone_before:  # someone else (a late clean-up, the garbage collector) was first
        log.info("janitor.already_gone", **f.to_dict())
        return
    report.deleted.append(f)
    log.info("janitor.deleted", **f.to_dict())


def run_janitor(
    contexts: Iterable[str],
    client_for: Callable[[str], JanitorClient],
    *,
    now: datetime,
    dry_run: bool = False,
    early: EarlyRevoke | None = None,
) -> JanitorReport:
    """Sweep every context; an error on one is recorded and the others still run."""
    report = JanitorReport(dry_run=dry_run)
    for ctx in contexts:
        try:
            sweep_context(
                ctx, client_for(ctx), now=now, dry_run=dry_run, report=report, early=early
            )
        except ScanfleetError as e:
            report.context_errors[ctx] = str(e)
            log.error("janitor.context_failed", context=ctx, error=str(e))
    log.info(
        "janitor.finished",
        dry_run=dry_run,
        deleted=len(report.deleted),
        foreign=len(report.foreign),
        changed=len(report.changed),
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
    early: EarlyRevoke | None = None,
) -> JanitorReport:
    """Resolve contexts (`--context`/`--all-contexts`/current) and sweep them.

    BadInput when the kubeconfig or a named context does not exist; a context whose
    credentials cannot be loaded is a context error, and the others still run.
    """
    chosen = choose_contexts(kubeconfig, list(contexts), all_contexts)
    clients = ClientCache(kubeconfig)
    try:
        return run_janitor(chosen, clients.get, now=now, dry_run=dry_run, early=early)
    finally:
        clients.close()
