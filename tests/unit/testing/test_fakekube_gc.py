"""The fake API server's garbage collector, DELETE options, token lifetimes and request log.

Driven by the official client and by real kubectl, as ``test_fakekube.py`` does.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from scanfleet.testing.fakekube import FakeCluster
from tests.support.kubeapi import (
    api_client,
    kubectl,
    mint_scoped_token,
    sa_body,
    status_body,
)

RBAC = "rbac.authorization.k8s.io"


def owner_ref(sa: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "name": sa.metadata.name,
        "uid": sa.metadata.uid,
    }


def role_body(name: str, owners: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if owners is not None:
        meta["ownerReferences"] = owners
    return {
        "metadata": meta,
        "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"], "resourceNames": ["web"]}
        ],
    }


def binding_body(name: str, owners: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "ownerReferences": owners},
        "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name}],
    }


def owned_identity(
    core: client.CoreV1Api, rbac: client.RbacAuthorizationV1Api, ns: str, name: str
) -> Any:
    """A ServiceAccount owning a same-named Role and RoleBinding (the lean scan identity)."""
    sa = core.create_namespaced_service_account(ns, sa_body(name))
    rbac.create_namespaced_role(ns, role_body(name, [owner_ref(sa)]))
    rbac.create_namespaced_role_binding(ns, binding_body(name, [owner_ref(sa)]))
    return sa


def names(cluster: FakeCluster, kind: str, ns: str = "apps") -> set[str]:
    return {o["metadata"]["name"] for o in cluster.objects(kind, ns)}


@pytest.fixture
def apis(admin_kubeconfig: Path) -> Any:
    with api_client(admin_kubeconfig) as api:
        yield client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)


# --- garbage collection ----------------------------------------------------------------------
@pytest.mark.parametrize("policy", [None, "Background", "Foreground"])
def test_deleting_the_owner_collects_its_dependents(
    fake_cluster: FakeCluster, apis: Any, policy: str | None
) -> None:
    core, rbac = apis
    sa = owned_identity(core, rbac, "apps", "scan-a")
    owned_identity(core, rbac, "apps", "scan-b")
    rbac.create_namespaced_role("apps", role_body("unowned"))
    kwargs = {"propagation_policy": policy} if policy else {}
    core.delete_namespaced_service_account("scan-a", "apps", **kwargs)
    assert names(fake_cluster, "roles") == {"scan-b", "unowned"}
    assert names(fake_cluster, "rolebindings") == {"scan-b"}
    assert sorted(c[:3] for c in fake_cluster.collected) == [
        ("rolebindings", "apps", "scan-a"),
        ("roles", "apps", "scan-a"),
    ]
    assert {c[3] for c in fake_cluster.collected}.isdisjoint({sa.metadata.uid})
    # the collector is not the worker: its deletes are not in the request log
    assert [r.short for r in fake_cluster.request_log if r.method == "DELETE"] == [
        "delete serviceaccounts apps/scan-a"
    ]


def test_orphan_keeps_dependents_and_drops_the_reference(
    fake_cluster: FakeCluster, apis: Any
) -> None:
    core, rbac = apis
    owned_identity(core, rbac, "apps", "scan-a")
    core.delete_namespaced_service_account("scan-a", "apps", propagation_policy="Orphan")
    role = rbac.read_namespaced_role("scan-a", "apps")
    assert role.metadata.owner_references is None
    assert fake_cluster.collected == []


def test_objects_naming_a_missing_owner_are_collected(fake_cluster: FakeCluster, apis: Any) -> None:
    core, rbac = apis
    sa = core.create_namespaced_service_account("apps", sa_body("live"))
    ghost = {"apiVersion": "v1", "kind": "ServiceAccount", "name": "gone", "uid": "0000-gone"}
    same_name_other_uid = owner_ref(sa) | {"uid": "not-the-live-uid"}
    other_ns = owner_ref(sa)  # a namespaced owner must live in the dependent's namespace
    rbac.create_namespaced_role("apps", role_body("dangling", [ghost]))
    rbac.create_namespaced_role("apps", role_body("wrong-uid", [same_name_other_uid]))
    rbac.create_namespaced_role("other", role_body("cross-ns", [other_ns]))
    rbac.create_namespaced_role("apps", role_body("half", [ghost, owner_ref(sa)]))
    assert names(fake_cluster, "roles") == {"half"}
    assert names(fake_cluster, "roles", "other") == set()
    half = rbac.read_namespaced_role("half", "apps")
    assert [r.uid for r in half.metadata.owner_references] == [sa.metadata.uid]


def test_a_paused_collector_leaves_dependents_until_it_runs(
    fake_cluster: FakeCluster, apis: Any
) -> None:
    core, rbac = apis
    owned_identity(core, rbac, "apps", "scan-a")
    fake_cluster.pause_gc()
    core.delete_namespaced_service_account("scan-a", "apps")
    assert names(fake_cluster, "roles") == {"scan-a"}  # the window a real collector has
    assert names(fake_cluster, "rolebindings") == {"scan-a"}
    assert fake_cluster.collect_garbage() == 2
    assert names(fake_cluster, "roles") == names(fake_cluster, "rolebindings") == set()


def test_kubectl_delete_collects_dependents(
    fake_cluster: FakeCluster, apis: Any, admin_kubeconfig: Path
) -> None:
    core, rbac = apis
    owned_identity(core, rbac, "apps", "scan-a")
    kubectl(admin_kubeconfig, "-n", "apps", "delete", "serviceaccount", "scan-a", check=True)
    (delete,) = [r for r in fake_cluster.request_log if r.method == "DELETE"]
    assert delete.body["propagationPolicy"] == "Background"  # kubectl's default cascade
    assert names(fake_cluster, "roles") == names(fake_cluster, "rolebindings") == set()
    owned_identity(core, rbac, "apps", "scan-b")
    kubectl(
        admin_kubeconfig, "-n", "apps", "delete", "sa", "scan-b", "--cascade=orphan", check=True
    )
    assert names(fake_cluster, "roles") == {"scan-b"}


# --- DELETE preconditions and options ---------------------------------------------------------
def test_delete_uid_precondition(fake_cluster: FakeCluster, apis: Any) -> None:
    core, rbac = apis
    sa = owned_identity(core, rbac, "apps", "scan-a")
    wrong = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid="someone-else"))
    with pytest.raises(ApiException) as err:
        core.delete_namespaced_service_account("scan-a", "apps", body=wrong)
    body = status_body(err.value)
    assert (err.value.status, body["reason"]) == (409, "Conflict")
    assert body["message"] == (
        'Operation cannot be fulfilled on serviceaccounts "scan-a": Precondition failed: UID in '
        f"precondition: someone-else, UID in object meta: {sa.metadata.uid}"
    )
    with pytest.raises(ApiException) as err:
        rbac.delete_namespaced_role("scan-a", "apps", body=wrong)
    assert status_body(err.value)["details"] == {"name": "scan-a", "kind": "roles", "group": RBAC}
    assert names(fake_cluster, "serviceaccounts") == names(fake_cluster, "roles") == {"scan-a"}
    right = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=sa.metadata.uid))
    core.delete_namespaced_service_account("scan-a", "apps", body=right)
    assert names(fake_cluster, "serviceaccounts") == set()
    (logged,) = [r for r in fake_cluster.request_log if r.method == "DELETE" and r.code == 200]
    assert logged.body["preconditions"] == {"uid": sa.metadata.uid}
    assert logged.old_object["metadata"]["uid"] == sa.metadata.uid


def test_delete_resource_version_precondition_and_bad_policy(
    fake_cluster: FakeCluster, apis: Any
) -> None:
    core, _ = apis
    core.create_namespaced_service_account("apps", sa_body("s"))
    stale = client.V1DeleteOptions(preconditions=client.V1Preconditions(resource_version="1"))
    with pytest.raises(ApiException) as err:
        core.delete_namespaced_service_account("s", "apps", body=stale)
    assert err.value.status == 409
    assert "ResourceVersion in precondition: 1" in status_body(err.value)["message"]
    with pytest.raises(ApiException) as err:
        core.delete_namespaced_service_account("s", "apps", propagation_policy="Sideways")
    assert (err.value.status, status_body(err.value)["reason"]) == (422, "Invalid")
    core.delete_namespaced_service_account("s", "apps", dry_run="All")
    assert names(fake_cluster, "serviceaccounts") == {"s"}


# --- TokenRequest expiry ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("lifetime", "granted"), [(None, 3600), (lambda s: 900, 900), (lambda s: 2 * s, 7200)]
)
def test_token_expiration_timestamp_tells_the_granted_lifetime(
    fake_cluster: FakeCluster, apis: Any, lifetime: Any, granted: int
) -> None:
    core, _ = apis
    fake_cluster.set_token_lifetime(lifetime)
    core.create_namespaced_service_account("apps", sa_body("tok"))
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    tr = core.create_namespaced_service_account_token(
        "tok", "apps", {"spec": {"expirationSeconds": 3600}}
    )
    after = dt.datetime.now(dt.UTC)
    expires = tr.status.expiration_timestamp
    assert before + dt.timedelta(seconds=granted) <= expires
    assert expires <= after + dt.timedelta(seconds=granted)
    assert tr.spec.expiration_seconds == 3600  # the request, echoed


# --- the request log -------------------------------------------------------------------------
def test_request_log_has_verb_resource_user_status_and_bodies(
    fake_cluster: FakeCluster, apis: Any
) -> None:
    core, rbac = apis
    fake_cluster.clear_request_log()
    core.create_namespaced_service_account("apps", sa_body("s"))
    token = core.create_namespaced_service_account_token(
        "s", "apps", {"spec": {"expirationSeconds": 600}}
    ).status.token
    with pytest.raises(ApiException):
        rbac.read_namespaced_role("nope", "apps")
    core.delete_namespaced_service_account("s", "apps")
    log = fake_cluster.request_log
    assert [
        (r.method, r.verb, r.group, r.resource, r.subresource, r.namespace, r.name, r.code)
        for r in log
    ] == [
        ("POST", "create", "", "serviceaccounts", "", "apps", "", 201),
        ("POST", "create", "", "serviceaccounts", "token", "apps", "s", 201),
        ("GET", "get", RBAC, "roles", "", "apps", "nope", 404),
        ("DELETE", "delete", "", "serviceaccounts", "", "apps", "s", 200),
    ]
    assert {r.identity for r in log} == {"fake-admin"}
    assert "system:masters" in log[0].groups
    assert log[0].body["metadata"]["name"] == "s"
    assert log[1].body["spec"] == {"expirationSeconds": 600}
    assert log[2].body is None
    assert token not in repr(log)


@pytest.mark.leaves_leftovers("mints its identity by hand, as the fake's own tests do")
def test_request_log_of_a_kubectl_exec_with_a_scan_token(
    fake_cluster: FakeCluster, admin_kubeconfig: Path, tmp_path: Path
) -> None:
    with api_client(admin_kubeconfig) as api:
        token = mint_scoped_token(api, "apps", "web")
    scoped = fake_cluster.write_kubeconfig(tmp_path / "scoped", token=token, namespace="apps")
    fake_cluster.clear_request_log()
    kubectl(scoped, "exec", "web", "-c", "app", "--", "true", check=True)
    execs = [r for r in fake_cluster.request_log if r.subresource == "exec"]
    assert execs
    assert execs[-1].code == 101
    assert {(r.verb, r.name, r.identity) for r in execs} <= {
        ("get", "web", "system:serviceaccount:apps:scan-1"),
        ("create", "web", "system:serviceaccount:apps:scan-1"),
    }
    assert all(t not in repr(fake_cluster.request_log) for t in fake_cluster.issued_tokens)


def test_kubectl_create_token_sees_the_granted_expiry(
    fake_cluster: FakeCluster, apis: Any, admin_kubeconfig: Path
) -> None:
    core, _ = apis
    core.create_namespaced_service_account("apps", sa_body("tok"))
    fake_cluster.set_token_lifetime(lambda requested: requested // 2)
    proc = kubectl(
        admin_kubeconfig,
        "-n",
        "apps",
        "create",
        "token",
        "tok",
        "--duration",
        "2h",
        "-o",
        "json",
        check=True,
    )
    tr = json.loads(proc.stdout)
    created = dt.datetime.fromisoformat(tr["metadata"]["creationTimestamp"])
    expires = dt.datetime.fromisoformat(tr["status"]["expirationTimestamp"])
    assert tr["spec"]["expirationSeconds"] == 7200
    assert abs((expires - created).total_seconds() - 3600) <= 2
