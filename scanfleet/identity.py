"""The throwaway identity of one scan: mint, write the kubeconfig, revoke.

For a target pod it creates, in the pod's namespace, a ServiceAccount, a Role allowing
exactly `get` on that pod and `create`/`get` on its `pods/exec` (nothing else), and a
RoleBinding; then asks the TokenRequest API for a token that expires after the TTL. The
kubeconfig it writes is self-contained (inline CA, inline token, no paths, no client
certificate, no exec plugin), mode 0600 in a fresh 0700 directory.

`scan_identity()` is a context manager: whatever happens inside — an auditor failure, a
timeout, an interrupt — the RoleBinding, Role and ServiceAccount are deleted (each tried
even if another fails) and the directory removed. A failure while minting removes what was
already created. It never logs or raises the token or the kubeconfig content.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from scanfleet import logs, metrics
from scanfleet.clock import rfc3339
from scanfleet.errors import ScanfleetError
from scanfleet.kube import KubeClient
from scanfleet.kubeconfig import write_kubeconfig
from scanfleet.logs import redact_text
from scanfleet.targets import Target

log = structlog.get_logger("scanfleet.credentials")

MANAGED_BY = "app.kubernetes.io/managed-by"
SCAN_ID_LABEL = "scanfleet.io/scan-id"
RUN_ID_LABEL = "scanfleet.io/run-id"
EXPIRES_AT = "scanfleet.io/expires-at"
TARGET_ANNOTATION = "scanfleet.io/target"
MANAGED_SELECTOR = f"{MANAGED_BY}=scanfleet"
DELETE_ORDER = ("RoleBinding", "Role", "ServiceAccount")


def object_name(scan_id: str) -> str:
    return f"scanfleet-{scan_id}"


def metadata(
    name: str, scan_id: str, run_id: str, target: Target, ttl: int, now: datetime
) -> dict[str, Any]:
    return {
        "name": name,
        "labels": {MANAGED_BY: "scanfleet", SCAN_ID_LABEL: scan_id, RUN_ID_LABEL: run_id},
        "annotations": {
            EXPIRES_AT: rfc3339(now + timedelta(seconds=ttl)),
            TARGET_ANNOTATION: target.ref,
        },
    }


def role_rules(pod: str) -> list[dict[str, Any]]:
    """Exactly the two rules a k8s-container scan needs, pinned to one pod."""
    return [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"], "resourceNames": [pod]},
        # `get` too: kubectl 1.30+ opens exec as a WebSocket GET.
        {
            "apiGroups": [""],
            "resources": ["pods/exec"],
            "verbs": ["create", "get"],
            "resourceNames": [pod],
        },
    ]


def identity_objects(
    scan_id: str, run_id: str, target: Target, ttl: int, now: datetime
) -> dict[str, dict[str, Any]]:
    """The three object bodies, by kind, in creation order."""
    name = object_name(scan_id)
    meta = metadata(name, scan_id, run_id, target, ttl, now)
    return {
        "ServiceAccount": {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": meta,
            "automountServiceAccountToken": False,
        },
        "Role": {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta,
            "rules": role_rules(target.pod),
        },
        "RoleBinding": {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": target.namespace}],
        },
    }


@dataclass
class ScanIdentity:
    """A minted identity. `kubeconfig` is the only credential the auditor ever sees."""

    name: str
    namespace: str
    kubeconfig: Path
    cleanup: str = "complete"
    created: list[str] = field(default_factory=list)


@contextmanager
def scan_identity(
    kube: KubeClient, target: Target, scan_id: str, run_id: str, *, ttl: int, now: datetime
) -> Iterator[ScanIdentity]:
    """Mint the identity, yield it, and always revoke it."""
    name = object_name(scan_id)
    ns = target.namespace
    phases = metrics.identity_phases(kube)
    endpoint = kube.endpoint()
    if endpoint.insecure:
        log.warning(
            "credentials.insecure_tls",
            reason="the admin context skips TLS verification; the scan kubeconfig does too",
        )
    tmp = Path(tempfile.mkdtemp(prefix="scanfleet-"))  # mkdtemp creates it 0700
    identity = ScanIdentity(name=name, namespace=ns, kubeconfig=tmp / "kubeconfig")
    try:
        bodies = identity_objects(scan_id, run_id, target, ttl, now)
        kube.create_object("ServiceAccount", ns, bodies["ServiceAccount"])
        identity.created.append("ServiceAccount")
        kube.create_object("Role", ns, bodies["Role"])
        identity.created.append("Role")
        kube.create_object("RoleBinding", ns, bodies["RoleBinding"])
        identity.created.append("RoleBinding")
        token = kube.create_token(ns, name, ttl)
        with logs.secret(token):
            write_kubeconfig(tmp, endpoint, ns, token)
            kube.wait_for_access(ns, target.pod, token)
            log.info("credentials.minted", object=name, token_ttl=ttl)
            phases.minted()
            try:
                yield identity
            except ScanfleetError as e:
                # Whatever the auditor echoed, the token leaves with no error message.
                e.args = tuple(redact_text(str(a), token) for a in e.args)
                raise
    finally:
        phases.revoking()
        identity.cleanup = revoke(kube, ns, name, created=identity.created)
        shutil.rmtree(tmp, ignore_errors=True)
        if tmp.exists():
            identity.cleanup = "incomplete"
            log.error("credentials.kubeconfig_not_removed", kubeconfig_path=str(tmp))
        phases.revoked(identity.cleanup)


def revoke(kube: KubeClient, namespace: str, name: str, created: list[str] | None = None) -> str:
    """Delete RoleBinding, Role, ServiceAccount; each is tried even if another fails.

    Deleting the ServiceAccount invalidates its tokens. Returns "complete" or "incomplete".
    Objects that do not exist (never created, or already deleted) are fine. All three are
    tried even when `created` says a create never returned: a request that timed out may
    still have created its object. Only a failure to delete something known to exist makes
    the clean-up incomplete.
    """
    result = "complete"
    for kind in DELETE_ORDER:
        try:
            kube.delete(kind, namespace, name)
        except ScanfleetError as e:
            known = created is None or kind in created
            if known:
                result = "incomplete"
            (log.error if known else log.warning)(
                "credentials.revoke_failed", kind=kind, object=name, error=str(e)
            )
    if result == "complete":
        log.info("credentials.revoked", object=name)
    return result
