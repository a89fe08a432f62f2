"""The throwaway identity, checked with real kubectl as a second, independent client."""

from __future__ import annotations

import os
import stat
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from scanfleet.core.errors import ClusterForbidden, ForeignObject, ScanfleetError
from scanfleet.core.targets import Target
from scanfleet.identity.mint import identity_objects, object_name, role_rules, scan_identity
from scanfleet.kube.client import KubeClient
from scanfleet.testing.fakekube import FakeCluster
from tests.support.tools import require_tool

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
TARGET = Target("fake", "apps", "web", "app")


def kubectl(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    return subprocess.run(
        [require_tool("kubectl"), "--kubeconfig", str(kubeconfig), "--request-timeout=10s", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_role_has_exactly_two_rules_pinned_to_the_pod(
    kube: KubeClient, fake_cluster: FakeCluster
) -> None:
    with scan_identity(kube, TARGET, "0123456789abcdef", "run-1", ttl=900, now=NOW) as ident:
        [role] = fake_cluster.objects("roles", "apps")
        assert role["rules"] == [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"], "resourceNames": ["web"]},
            {
                "apiGroups": [""],
                "resources": ["pods/exec"],
                "verbs": ["create", "get"],
                "resourceNames": ["web"],
            },
        ]
        [sa] = fake_cluster.objects("serviceaccounts", "apps")
        assert sa["automountServiceAccountToken"] is False
        [rb] = fake_cluster.objects("rolebindings", "apps")
        assert rb["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": ident.name,
        }
        assert rb["subjects"] == [
            {"kind": "ServiceAccount", "name": ident.name, "namespace": "apps"}
        ]
        # The ServiceAccount, made before the token, says the requested expiry; the Role and
        # RoleBinding, made after it, the one the API server granted.
        assert ident.expires_at is not None
        granted = ident.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        for obj, expiry in ((role, granted), (sa, "2026-11-26T12:15:00Z"), (rb, granted)):
            meta = obj["metadata"]
            assert meta["name"] == "scanfleet-0123456789abcdef"
            assert meta["labels"] == {
                "app.kubernetes.io/managed-by": "scanfleet",
                "scanfleet.io/scan-id": "0123456789abcdef",
                "scanfleet.io/run-id": "run-1",
            }
            assert meta["annotations"] == {
                "scanfleet.io/expires-at": expiry,
                "scanfleet.io/target": "apps/web/app",
            }
        # Owned by the ServiceAccount: deleting it lets the garbage collector remove them.
        owner = {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "name": ident.name,
            "uid": sa["metadata"]["uid"],
        }
        assert role["metadata"]["ownerReferences"] == [owner]
        assert rb["metadata"]["ownerReferences"] == [owner]
        assert "ownerReferences" not in sa["metadata"]
        token_posts = [r for r in fake_cluster.requests if r.path.endswith("/token")]
        assert len(token_posts) == 1
    assert fake_cluster.scanfleet_objects() == []


@pytest.mark.parametrize("auth", ["token", "client-cert", "ca-file", "insecure"])
def test_kubeconfig_is_self_contained_private_and_minimal(
    make_cluster: Any, tmp_path: Path, auth: str
) -> None:
    cluster: FakeCluster = make_cluster()
    cluster.add_namespace("apps")
    cluster.add_pod("apps", "web", containers=["app"])
    admin = cluster.write_kubeconfig(tmp_path / "admin", context="fake", auth=auth)
    client = KubeClient(str(admin), "fake")
    with scan_identity(client, TARGET, "00000000000000aa", "r", ttl=900, now=NOW) as ident:
        path = ident.kubeconfig
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        doc = yaml.safe_load(path.read_text())
        [c] = doc["clusters"]
        [u] = doc["users"]
        [ctx] = doc["contexts"]
        assert doc["current-context"] == ctx["name"]
        assert ctx["context"]["namespace"] == "apps"
        assert set(u["user"]) == {"token"}
        assert u["user"]["token"] in cluster.issued_tokens
        assert c["cluster"]["server"] == cluster.url
        if auth == "insecure":
            assert c["cluster"]["insecure-skip-tls-verify"] is True
        else:
            assert "certificate-authority-data" in c["cluster"]
        text = path.read_text()
        for forbidden in (
            "certificate-authority:",
            "client-certificate",
            "client-key",
            "exec:",
            "tokenFile",
            str(tmp_path),
        ):
            assert forbidden not in text
        got = kubectl(path, "get", "pod", "web", "-o", "name")
        assert got.returncode == 0, got.stderr
        assert got.stdout.strip() == "pod/web"
    assert not path.parent.exists()
    assert cluster.scanfleet_objects() == []
    client.close()


def test_kubeconfig_grants_the_pod_and_nothing_else(
    kube: KubeClient, fake_cluster: FakeCluster
) -> None:
    fake_cluster.add_pod("apps", "db", containers=["pg"])
    fake_cluster.add_pod("other", "web", containers=["app"])
    with scan_identity(kube, TARGET, "00000000000000bb", "r", ttl=900, now=NOW) as ident:
        cfg = ident.kubeconfig
        assert kubectl(cfg, "get", "pod", "web", "-o", "json").returncode == 0
        refusals = {
            "secrets": kubectl(cfg, "get", "secrets"),
            "other pod": kubectl(cfg, "get", "pod", "db"),
            "other pod exec": kubectl(cfg, "exec", "db", "--", "true"),
            "other namespace": kubectl(cfg, "get", "pod", "web", "-n", "other"),
            "list pods": kubectl(cfg, "get", "pods"),
            "delete pod": kubectl(cfg, "delete", "pod", "web", "--wait=false"),
        }
        for what, res in refusals.items():
            assert res.returncode != 0, what
            assert "forbidden" in res.stderr.lower(), (what, res.stderr)
        exec_res = kubectl(cfg, "exec", "web", "-c", "app", "--", "id")
        assert exec_res.returncode == 0, exec_res.stderr
    assert not cfg.exists()


def test_token_is_revoked_after_the_scan(
    kube: KubeClient, fake_cluster: FakeCluster, tmp_path: Path
) -> None:
    with scan_identity(kube, TARGET, "00000000000000cc", "r", ttl=900, now=NOW) as ident:
        saved = tmp_path / "copy"
        saved.write_text(ident.kubeconfig.read_text())
        alive = kubectl(saved, "get", "pod", "web", "-o", "name")
        assert alive.returncode == 0, alive.stderr  # the copy works while the scan runs
    assert not ident.kubeconfig.exists()
    res = kubectl(saved, "get", "pod", "web")
    assert res.returncode != 0
    # kubectl's words for a 401: the token died with its ServiceAccount.
    assert "must be logged in" in res.stderr


def test_leftovers_of_an_earlier_attempt_are_replaced(
    kube: KubeClient, fake_cluster: FakeCluster
) -> None:
    scan_id = "00000000000000dd"
    bodies = identity_objects(scan_id, "r", TARGET, 900, NOW)
    old_sa = kube.create_object("ServiceAccount", "apps", bodies["ServiceAccount"])
    # An earlier attempt's Role, of scanfleet's shape (pinned to a pod that is gone now).
    stale = dict(bodies["Role"], rules=role_rules("old"))
    kube.create_object("Role", "apps", stale)
    with scan_identity(kube, TARGET, scan_id, "r", ttl=900, now=NOW):
        [role] = fake_cluster.objects("roles", "apps")
        assert role["rules"][0]["resourceNames"] == ["web"]
        [sa] = fake_cluster.objects("serviceaccounts", "apps")
        assert sa["metadata"]["uid"] != old_sa["uid"]
    assert not [r for r in fake_cluster.requests if r.method in ("PUT", "PATCH")]
    replaced = [
        r
        for r in fake_cluster.request_log
        if r.method == "DELETE" and r.resource in ("serviceaccounts", "roles") and r.code == 200
    ]
    assert all((r.body or {}).get("preconditions", {}).get("uid") for r in replaced[:2])


@pytest.mark.parametrize("kind", ["ServiceAccount", "Role", "RoleBinding"])
def test_a_same_named_object_that_is_not_ours_fails_the_scan_and_is_left_alone(
    kube: KubeClient, fake_cluster: FakeCluster, kind: str
) -> None:
    scan_id = "00000000000000de"
    bodies = identity_objects(scan_id, "r", TARGET, 900, NOW)
    foreign = {
        "ServiceAccount": dict(bodies["ServiceAccount"], automountServiceAccountToken=True),
        "Role": dict(
            bodies["Role"], rules=[{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]
        ),
        "RoleBinding": dict(
            bodies["RoleBinding"],
            roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "admin"},
        ),
    }[kind]
    if kind == "RoleBinding":
        kube.create_object("Role", "apps", dict(bodies["Role"], metadata={"name": "admin"}))
    planted = kube.create_object(kind, "apps", foreign)
    with (
        pytest.raises(ForeignObject, match=f"a {kind} of that name exists and is not"),
        scan_identity(kube, TARGET, scan_id, "r", ttl=900, now=NOW),
    ):
        pytest.fail("must not be reached")
    [still] = [o for o in fake_cluster.scanfleet_objects() if o["kind"] == kind]
    assert still["metadata"]["uid"] == planted["uid"]
    kube.delete(kind, "apps", planted["name"])
    kube.delete("Role", "apps", "admin")


def test_exception_inside_revokes_and_propagates(
    kube: KubeClient, fake_cluster: FakeCluster
) -> None:
    def scan_that_crashes() -> None:
        with scan_identity(kube, TARGET, "00000000000000ee", "r", ttl=900, now=NOW):
            assert len(fake_cluster.scanfleet_objects()) == 3
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        scan_that_crashes()
    assert fake_cluster.scanfleet_objects() == []


def test_token_request_failure_removes_what_was_created(
    kube: KubeClient, fake_cluster: FakeCluster
) -> None:
    fake_cluster.fail("POST", r"/token$", 422, times=1, message="bad ttl")
    with (
        pytest.raises(ScanfleetError, match="token"),
        scan_identity(kube, TARGET, "00000000000000ff", "r", ttl=900, now=NOW),
    ):
        pytest.fail("must not be reached")
    assert fake_cluster.scanfleet_objects() == []
    # Only the ServiceAccount existed yet: its one delete is the whole clean-up.
    deletes = [r.path.rsplit("/", 2)[-2] for r in fake_cluster.requests if r.method == "DELETE"]
    assert deletes == ["serviceaccounts"]


def test_object_name_is_a_valid_dns_label() -> None:
    name = object_name("0123456789abcdef")
    assert len(name) <= 63
    Target("c", "ns", name, name)


def test_a_briefly_refused_token_is_waited_for_before_the_audit(
    kube: KubeClient, fake_cluster: FakeCluster
) -> None:
    # As an HA control plane's authorizer cache can: refuse the new token at first.
    fake_cluster.fail("GET", r"/namespaces/apps/pods/web$", 403, times=2)
    with scan_identity(kube, TARGET, "0000000000000a11", "r", ttl=900, now=NOW) as ident:
        assert ident.kubeconfig.exists()
    probes = [r for r in fake_cluster.requests if r.path == "/api/v1/namespaces/apps/pods/web"]
    assert len(probes) == 3


def test_a_token_that_never_gets_access_fails_as_forbidden_and_is_revoked(
    kube: KubeClient, fake_cluster: FakeCluster
) -> None:
    fake_cluster.fail("GET", r"/namespaces/apps/pods/web$", 403, times=1000)

    def mint() -> None:
        with scan_identity(
            kube, TARGET, "0000000000000b22", "r", ttl=900, now=NOW, access_wait=1.0
        ):
            pytest.fail("must not be reached")

    with pytest.raises(ClusterForbidden, match="could not read pod apps/web"):
        mint()
    fake_cluster.clear_faults()
    assert fake_cluster.scanfleet_objects() == []
