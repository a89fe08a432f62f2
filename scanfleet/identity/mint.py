"""The throwaway identity of one scan: mint, read the pod with it, revoke.

For a target pod it makes, in the pod's namespace, six API requests on the success path:

1. create the ServiceAccount (admin), keeping its UID;
2. a TokenRequest for it (admin) with `expirationSeconds` = TTL; the expiry the API server
   granted (`status.expirationTimestamp`) is the one that counts: a lifetime shorter than
   `min_lifetime` (scan timeout + minting margin) fails the scan before anything else;
3. create the Role — exactly `get` on that pod and `create`/`get` on its `pods/exec` — and
4. the RoleBinding, both owned by the ServiceAccount (an ownerReference with its UID,
   without blockOwnerDeletion) and annotated with the granted expiry (the ServiceAccount,
   created before the token, carries the requested one: creation + TTL);
5. read the target pod WITH THE NEW TOKEN: the access check (401/403 of RBAC propagation
   retried), the pod's existence, phase, containers and UID, in one request — the admin
   identity never reads the pod;
6. revoke: one DELETE of the ServiceAccount (propagationPolicy Background), which
   invalidates its tokens at once and leaves the Role and RoleBinding to the garbage
   collector; only if it fails are the RoleBinding and Role deleted too (SPEC §3).

The token is not bound to the pod (`boundObjectRef`): kube-apiserver binds a token only to a
pod that runs as the token's ServiceAccount, which a target pod never does. So a pod
replaced under the same name is caught by comparing UIDs: `ScanIdentity.target_changed()`
reads the pod again (used on the failure path of the audit).

The kubeconfig it writes is self-contained (inline CA, inline token, no paths, no client
certificate, no exec plugin), mode 0600 in a fresh 0700 directory. `scan_identity()` is a
context manager: whatever happens inside, the identity is revoked and the directory
removed; a signal arriving during the revoke waits until the revoke is done. A failure
while minting removes what was already created. `not_ours()` is the one test of "scanfleet
made this object" (the 409 re-create path here, the janitor). It never logs or raises the
token or the kubeconfig content.
"""

from __future__ import annotations

import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Collection, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from scanfleet.core import logs, metrics
from scanfleet.core.clock import rfc3339, utcnow
from scanfleet.core.errors import (
    ClusterApiError,
    ForeignObject,
    ScanfleetError,
    TargetChanged,
    TargetNotFound,
)
from scanfleet.core.logs import redact_text
from scanfleet.core.targets import PodInfo, Target
from scanfleet.kube.client import KubeClient
from scanfleet.kube.kubeconfig import write_kubeconfig
from scanfleet.kube.scan_client import ScanClient

log = structlog.get_logger(__name__)

MANAGED_BY = "app.kubernetes.io/managed-by"
SCAN_ID_LABEL = "scanfleet.io/scan-id"
RUN_ID_LABEL = "scanfleet.io/run-id"
EXPIRES_AT = "scanfleet.io/expires-at"
TARGET_ANNOTATION = "scanfleet.io/target"
MANAGED_SELECTOR = f"{MANAGED_BY}=scanfleet"
DELETE_ORDER = ("RoleBinding", "Role", "ServiceAccount")
NAME_PATTERN = re.compile(r"^scanfleet-([0-9a-f]{16})$")
RBAC_GROUP = "rbac.authorization.k8s.io"
ACCESS_WAIT = 15.0  # seconds the new token may be refused while RBAC propagates


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
    scan_id: str,
    run_id: str,
    target: Target,
    ttl: int,
    now: datetime,
    owner_uid: str | None = None,
) -> dict[str, dict[str, Any]]:
    """The three object bodies, by kind; with `owner_uid`, Role and RoleBinding are owned
    by the ServiceAccount (an ownerReference without blockOwnerDeletion)."""
    name = object_name(scan_id)
    meta = metadata(name, scan_id, run_id, target, ttl, now)
    owned = dict(meta)
    if owner_uid is not None:
        owned["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "ServiceAccount", "name": name, "uid": owner_uid}
        ]
    return {
        "ServiceAccount": {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": meta,
            "automountServiceAccountToken": False,
        },
        "Role": {
            "apiVersion": f"{RBAC_GROUP}/v1",
            "kind": "Role",
            "metadata": owned,
            "rules": role_rules(target.pod),
        },
        "RoleBinding": {
            "apiVersion": f"{RBAC_GROUP}/v1",
            "kind": "RoleBinding",
            "metadata": owned,
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": target.namespace}],
        },
    }


def not_ours(obj: dict[str, Any]) -> str | None:
    """Why a labelled object is not one scanfleet made (None: it is), from `kube.as_dict`.

    Ours: named scanfleet-<16 hex>; labelled managed-by scanfleet with the scan-id of its
    name; owned, if at all, only by the ServiceAccount of its name; a ServiceAccount that
    mounts no token; a Role of exactly the two pinned rules on one pod; a RoleBinding of
    the same-named Role to the same-named ServiceAccount of its namespace, nothing else.
    """
    name, labels = str(obj.get("name") or ""), obj.get("labels") or {}
    match = NAME_PATTERN.match(name)
    if match is None:
        return "its name is not scanfleet-<16 hex>"
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    kind = obj.get("kind")
    checks = (
        (
            labels.get(MANAGED_BY) != "scanfleet" or labels.get(SCAN_ID_LABEL) != match.group(1),
            "its labels do not carry managed-by scanfleet and the scan-id of its name",
        ),
        (
            any(
                (r.get("apiVersion"), r.get("kind"), r.get("name"))
                != ("v1", "ServiceAccount", name)
                for r in refs
            ),
            "it has an owner other than the ServiceAccount of its name",
        ),
        (
            kind == "ServiceAccount" and obj.get("automountServiceAccountToken") is not False,
            "the ServiceAccount may mount a token",
        ),
        (
            kind == "Role" and not _pinned_rules(obj.get("rules") or []),
            "its rules are not exactly the two pinned rules on one pod",
        ),
        (
            kind == "RoleBinding" and not _own_binding(obj, name),
            "it does not bind the Role of its name to the ServiceAccount of its name only",
        ),
    )
    return next((why for bad, why in checks if bad), None)


def _pinned_rules(rules: list[dict[str, Any]]) -> bool:
    pods = [n for r in rules for n in r.get("resourceNames") or []]
    if len(rules) != 2 or not pods or not pods[0]:
        return False
    norm = [{k: sorted(v) if k == "verbs" else v for k, v in r.items() if v} for r in rules]
    return norm == role_rules(pods[0])


def _own_binding(obj: dict[str, Any], name: str) -> bool:
    subjects = obj.get("subjects") or []
    return obj.get("roleRef") == {"apiGroup": RBAC_GROUP, "kind": "Role", "name": name} and (
        len(subjects) == 1
        and subjects[0].get("kind") == "ServiceAccount"
        and subjects[0].get("name") == name
        and subjects[0].get("apiGroup") in (None, "")
        and subjects[0].get("namespace") in (None, obj.get("namespace"))
    )


@dataclass
class ScanIdentity:
    """A minted identity. `kubeconfig` is the only credential the auditor ever sees."""

    name: str
    namespace: str
    kubeconfig: Path
    cleanup: str = "complete"
    created: list[str] = field(default_factory=list)
    uids: dict[str, str] = field(default_factory=dict)
    """The UID of each object this scan created, by kind."""
    foreign: set[str] = field(default_factory=set)
    """Kinds whose name was taken by an object that is not scanfleet's: never deleted."""
    pod: PodInfo | None = None
    """The target pod as the scan identity read it before the audit."""
    expires_at: datetime | None = None
    """The token's expiry as the API server granted it."""
    client: ScanClient | None = None

    def target_changed(self) -> TargetChanged | None:
        """Read the pod again with the token: TargetChanged if it is gone or has another UID.

        None when it is the same pod, or when that cannot be told (the read failed).
        """
        if self.client is None or self.pod is None:
            return None
        ref, uid = f"{self.namespace}/{self.pod.name}", self.pod.uid
        try:
            now = self.client.read_pod(self.namespace, self.pod.name)
        except TargetNotFound:
            return TargetChanged(f"pod {ref} (uid {uid}) was deleted during the scan")
        except ScanfleetError as e:
            log.warning("credentials.target_recheck_failed", error=str(e))
            return None
        if now.uid == uid:
            return None
        return TargetChanged(
            f"pod {ref} was replaced during the scan: uid {uid} when the scan started, "
            f"{now.uid} now; the result would not be the scanned pod's"
        )


@contextmanager
def scan_identity(
    kube: KubeClient,
    target: Target,
    scan_id: str,
    run_id: str,
    *,
    ttl: int,
    now: datetime,
    min_lifetime: float = 0,
    access_wait: float = ACCESS_WAIT,
) -> Iterator[ScanIdentity]:
    """Mint the identity and read the pod with it, yield it, and always revoke it."""
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
        try:
            sa_uid = _create(kube, identity, bodies["ServiceAccount"])
        except TargetNotFound as e:  # the namespace does not exist
            raise TargetNotFound(f"pod {ns}/{target.pod}: {e}") from None
        token, granted = kube.create_token(ns, name, ttl)
        with logs.secret(token):
            identity.expires_at = _granted(granted, now, ttl, min_lifetime, target)
            owned = identity_objects(scan_id, run_id, target, ttl, now, owner_uid=sa_uid)
            for kind in ("Role", "RoleBinding"):
                owned[kind]["metadata"]["annotations"][EXPIRES_AT] = rfc3339(identity.expires_at)
                _create(kube, identity, owned[kind])
            write_kubeconfig(tmp, endpoint, ns, token)
            identity.client = ScanClient(endpoint, token, kube.context, kube.retries)
            identity.pod = identity.client.read_pod(ns, target.pod, wait=access_wait)
            log.info(
                "credentials.minted",
                object=name,
                token_ttl=ttl,
                expires_at=rfc3339(identity.expires_at),
                pod_uid=identity.pod.uid,
            )
            phases.minted()
            try:
                yield identity
            except ScanfleetError as e:
                # Whatever the auditor echoed, the token leaves with no error message.
                e.args = tuple(redact_text(str(a), token) for a in e.args)
                raise
    finally:
        with _signals_held():  # a SIGTERM now is delivered once all of this is done
            phases.revoking()
            if identity.client is not None:
                identity.client.close()
            identity.cleanup = revoke(
                kube,
                ns,
                name,
                created=identity.created,
                uids=identity.uids,
                foreign=identity.foreign,
            )
            shutil.rmtree(tmp, ignore_errors=True)
            if tmp.exists():
                identity.cleanup = "incomplete"
                log.error("credentials.kubeconfig_not_removed", kubeconfig_path=str(tmp))
            phases.revoked(identity.cleanup)


def _create(kube: KubeClient, identity: ScanIdentity, body: dict[str, Any]) -> str:
    """Create one object of the identity (unless a foreign one has its name); its UID."""
    kind = body["kind"]
    try:
        obj = kube.create_object(kind, identity.namespace, body, not_ours)
    except ForeignObject:
        identity.foreign.add(kind)
        raise
    identity.created.append(kind)
    identity.uids[kind] = str(obj["uid"])
    return identity.uids[kind]


def _granted(
    granted: datetime | None, now: datetime, ttl: int, min_lifetime: float, target: Target
) -> datetime:
    """The token's expiry; ClusterApiError when the API server granted too short a life."""
    if granted is None:  # a server that does not say: what was asked for
        return now + timedelta(seconds=ttl)
    lifetime = (granted - utcnow()).total_seconds()  # the server's clock, not the injected one
    if lifetime < min_lifetime:
        raise ClusterApiError(
            f"context {target.context!r}: the API server granted the scan token "
            f"{lifetime:.0f}s (until {rfc3339(granted)}), less than the scan timeout plus "
            f"the minting margin ({min_lifetime:g}s): lower the scan timeout, or raise the "
            "cluster's --service-account-max-token-expiration"
        )
    return granted


def revoke(
    kube: KubeClient,
    namespace: str,
    name: str,
    created: list[str] | None = None,
    uids: Mapping[str, str] | None = None,
    foreign: Collection[str] = (),
) -> str:
    """Delete the ServiceAccount; only if that fails, the RoleBinding and Role too.

    Deleting the ServiceAccount invalidates all its tokens at once; the garbage collector
    removes the Role and RoleBinding it owns (propagationPolicy Background) and nothing
    here waits for it. An object whose UID is in `uids` is deleted only if it is still that
    one; a `foreign` kind (its name taken by an object not scanfleet's) never. Returns
    "complete" or "incomplete". Objects that do not exist are fine; all are tried even when
    `created` says a create never returned (a request that timed out may still have created
    its object). A SIGTERM/SIGINT arriving meanwhile is held until the deletes are done.
    """
    uids = uids or {}
    if "ServiceAccount" in foreign:
        return "complete"  # it is first: nothing of this scan was created
    with _signals_held():
        try:
            kube.delete(
                "ServiceAccount", namespace, name, uid=uids.get("ServiceAccount"), background=True
            )
        except ScanfleetError as e:
            known = created is None or "ServiceAccount" in created
            (log.error if known else log.warning)(
                "credentials.revoke_failed", kind="ServiceAccount", object=name, error=str(e)
            )
            kinds = tuple(k for k in DELETE_ORDER[:2] if k not in foreign)
            others = _delete_each(kube, namespace, name, created, kinds, uids)
            return "incomplete" if known or others == "incomplete" else "complete"
    log.info("credentials.revoked", object=name)
    return "complete"


def _delete_each(
    kube: KubeClient,
    namespace: str,
    name: str,
    created: list[str] | None,
    kinds: tuple[str, ...],
    uids: Mapping[str, str],
) -> str:
    result = "complete"
    for kind in kinds:
        try:
            kube.delete(kind, namespace, name, uid=uids.get(kind))
        except ScanfleetError as e:
            known = created is None or kind in created
            if known:
                result = "incomplete"
            (log.error if known else log.warning)(
                "credentials.revoke_failed", kind=kind, object=name, error=str(e)
            )
    return result


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGTERM/SIGINT (main thread only) until the block ends, then deliver them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, _frame: FrameType | None) -> None:
        held.append(signum)

    with ExitStack() as stack:
        for sig in (signal.SIGTERM, signal.SIGINT):
            old = signal.signal(sig, hold)
            stack.callback(signal.signal, sig, old)
        yield
    for signum in dict.fromkeys(held):
        log.info("credentials.signal_after_revoke", signal=signal.Signals(signum).name)
        signal.raise_signal(signum)
