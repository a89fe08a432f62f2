"""The lean identity lifecycle: which requests, as whom, and what revokes it.

Against the fake API server's request log: the admin identity never reads the target pod
(the scan's token does, and that read is the access check); revoke is one DELETE of the
ServiceAccount and the garbage collector removes the Role and RoleBinding; a pod replaced
under the same name is told apart by its UID; a signal during the revoke waits for it.
"""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime
from typing import Any

import pytest

from scanfleet.core.errors import ClusterApiError, TargetChanged
from scanfleet.core.targets import Target
from scanfleet.identity.mint import scan_identity
from scanfleet.kube.client import KubeClient
from scanfleet.testing.fakekube import FakeCluster

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
TARGET = Target("fake", "apps", "web", "app")
ADMIN = "fake-admin"


def _seq(cluster: FakeCluster) -> list[str]:
    return [
        f"{r.short} [{r.code}]" + ("" if r.identity == ADMIN else " (scan token)")
        for r in cluster.request_log
    ]


def test_mint_and_revoke_take_six_requests_and_the_token_reads_the_pod(
    kube: KubeClient, fake_cluster: FakeCluster
) -> None:
    fake_cluster.clear_request_log()
    with scan_identity(kube, TARGET, "0123456789abcdef", "r", ttl=900, now=NOW) as ident:
        assert ident.pod is not None
        [web] = [p for p in fake_cluster.objects("pods", "apps") if p["metadata"]["name"] == "web"]
        assert ident.pod.uid == web["metadata"]["uid"]
        assert [c.name for c in ident.pod.containers] == ["app", "sidecar"]  # regular only
    name = "apps/scanfleet-0123456789abcdef"
    assert _seq(fake_cluster) == [
        f"create serviceaccounts {name} [201]",
        f"create serviceaccounts/token {name} [201]",
        f"create roles {name} [201]",
        f"create rolebindings {name} [201]",
        "get pods apps/web [200] (scan token)",
        f"delete serviceaccounts {name} [200]",
    ]
    [delete] = [r for r in fake_cluster.request_log if r.method == "DELETE"]
    assert delete.body["propagationPolicy"] == "Background"
    assert delete.body["preconditions"]["uid"]
    # The garbage collector, not scanfleet, removed the Role and RoleBinding.
    assert {c[0] for c in fake_cluster.collected} == {"roles", "rolebindings"}


def test_a_missing_pod_is_target_not_found_from_the_tokens_read(
    kube: KubeClient, fake_cluster: FakeCluster
) -> None:
    gone = Target("fake", "apps", "nope", "app")
    with (
        pytest.raises(Exception, match="pod apps/nope not found") as info,
        scan_identity(kube, gone, "0123456789abcde0", "r", ttl=900, now=NOW),
    ):
        pytest.fail("must not be reached")
    assert info.value.kind == "target_not_found"  # type: ignore[attr-defined]
    assert not [r for r in fake_cluster.request_log if r.resource == "pods" and r.identity == ADMIN]


def test_a_pod_replaced_or_deleted_during_the_scan_is_target_changed(
    kube: KubeClient, fake_cluster: FakeCluster
) -> None:
    with scan_identity(kube, TARGET, "0123456789abcde1", "r", ttl=900, now=NOW) as ident:
        assert ident.target_changed() is None  # still the same pod
        assert ident.pod is not None
        old = ident.pod.uid
        fake_cluster.delete_pod("apps", "web")
        new = fake_cluster.add_pod("apps", "web", containers=["app"])["metadata"]["uid"]
        changed = ident.target_changed()
        assert isinstance(changed, TargetChanged)
        assert changed.kind == "target_changed"
        assert f"uid {old} when the scan started, {new} now" in str(changed)
        assert "apps/web" in str(changed)
        fake_cluster.delete_pod("apps", "web")
        gone = ident.target_changed()
        assert isinstance(gone, TargetChanged)
        assert f"pod apps/web (uid {old}) was deleted" in str(gone)
    fake_cluster.add_pod("apps", "web", containers=["app"])


def test_a_failed_serviceaccount_delete_deletes_the_binding_and_role_too(
    kube: KubeClient, fake_cluster: FakeCluster
) -> None:
    fake_cluster.fail("DELETE", r"/serviceaccounts/scanfleet-", 403, times=1)
    with scan_identity(kube, TARGET, "0123456789abcde2", "r", ttl=900, now=NOW) as ident:
        pass
    assert ident.cleanup == "incomplete"
    kinds = [o["kind"] for o in fake_cluster.scanfleet_objects()]
    assert kinds == ["ServiceAccount"]  # the grant is gone, the identity stays for the janitor
    kube.delete("ServiceAccount", "apps", ident.name)


def test_a_granted_lifetime_shorter_than_timeout_plus_margin_fails_before_any_grant(
    kube: KubeClient, fake_cluster: FakeCluster
) -> None:
    fake_cluster.set_token_lifetime(lambda requested: 700)
    fake_cluster.clear_request_log()
    with (
        pytest.raises(
            ClusterApiError,
            match=r"granted the scan token (699|700)s .* less than "
            r"the scan timeout plus the minting margin \(920s\)",
        ),
        scan_identity(kube, TARGET, "0123456789abcde3", "r", ttl=900, now=NOW, min_lifetime=920),
    ):
        pytest.fail("must not be reached")
    assert [r.resource for r in fake_cluster.request_log] == [
        "serviceaccounts",
        "serviceaccounts",
        "serviceaccounts",
    ]  # create, token, delete


def test_a_longer_granted_lifetime_is_what_the_role_says(
    kube: KubeClient, fake_cluster: FakeCluster
) -> None:
    fake_cluster.set_token_lifetime(lambda requested: requested * 2)
    with scan_identity(
        kube, TARGET, "0123456789abcde4", "r", ttl=900, now=NOW, min_lifetime=920
    ) as ident:
        assert ident.expires_at is not None
        lifetime = (ident.expires_at - datetime.now(UTC)).total_seconds()
        assert 1700 < lifetime <= 1800
        [role] = fake_cluster.objects("roles", "apps")
        assert role["metadata"]["annotations"][
            "scanfleet.io/expires-at"
        ] == ident.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")


class Stop(Exception):
    pass


def test_a_signal_during_the_revoke_is_delivered_after_the_delete(
    kube: KubeClient, fake_cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    def handler(signum: int, _frame: Any) -> None:
        seen.append("handler")
        raise Stop(signal.Signals(signum).name)

    original = KubeClient.delete

    def delete(self: KubeClient, *args: Any, **kwargs: Any) -> bool:
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the DELETE is on its way
        done = original(self, *args, **kwargs)
        seen.append("deleted")
        return done

    old = signal.signal(signal.SIGTERM, handler)
    monkeypatch.setattr(KubeClient, "delete", delete)
    try:
        with (
            pytest.raises(Stop, match="SIGTERM"),
            scan_identity(kube, TARGET, "0123456789abcde5", "r", ttl=900, now=NOW) as ident,
        ):
            pass
    finally:
        signal.signal(signal.SIGTERM, old)
    assert seen == ["deleted", "handler"]
    assert ident.cleanup == "complete"
    assert not ident.kubeconfig.parent.exists()
    assert fake_cluster.scanfleet_objects() == []
