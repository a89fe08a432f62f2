"""The janitor against the fake API server: expired orphans go, everything else stays."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from scanfleet.identity.janitor import janitor_for_kubeconfig, parse_expiry, run_janitor
from scanfleet.identity.mint import EXPIRES_AT, MANAGED_BY, SCAN_ID_LABEL, role_rules
from scanfleet.kube.client import ClientCache, KubeClient
from scanfleet.testing.fakekube import FakeCluster, write_kubeconfig
from tests.support.fixtures_ops import leave_orphans

pytestmark = pytest.mark.leaves_leftovers(
    "seeds expired and live orphans and asserts which ones remain"
)

KINDS = ("serviceaccounts", "roles", "rolebindings")


def names(cluster: FakeCluster, namespace: str | None = None) -> set[tuple[str, str, str]]:
    return {
        (kind, o["metadata"]["namespace"], o["metadata"]["name"])
        for kind in KINDS
        for o in cluster.objects(kind, namespace)
    }


def triple(namespace: str, scan_id: str) -> set[tuple[str, str, str]]:
    return {(k, namespace, f"scanfleet-{scan_id}") for k in KINDS}


@pytest.fixture
def two_clusters(
    make_cluster: Callable[..., FakeCluster], tmp_path: Path
) -> tuple[FakeCluster, FakeCluster, Path]:
    a, b = make_cluster(name="a"), make_cluster(name="b")
    for c in (a, b):
        c.add_namespace("apps")
        c.add_namespace("other")
    kubeconfig = write_kubeconfig(tmp_path / "kube" / "config", {"east": a, "west": b})
    return a, b, kubeconfig


NOW = datetime.now(UTC).replace(microsecond=0)


DEAD1, DEAD2, LIVE1 = "dead0000000000d1", "dead0000000000d2", "a11ce00000000001"


def seed(cluster: FakeCluster, kubeconfig: Path, context: str) -> None:
    """What a fleet leaves behind: killed scans, a running scan, and things not ours."""
    kube = KubeClient(str(kubeconfig), context)
    try:
        # Killed two hours ago with a one-hour token: expired an hour ago.
        leave_orphans(kube, "apps", DEAD1, "run1", NOW - timedelta(hours=2), 3600)
        leave_orphans(kube, "other", DEAD2, "run1", NOW - timedelta(hours=5), 3600)
        # A scan still running: expires in 50 minutes.
        leave_orphans(kube, "apps", LIVE1, "run2", NOW - timedelta(minutes=10), 3600)
        # Not ours: no label, even with an expired-looking annotation.
        meta: dict[str, Any] = {
            "name": "ci-deployer",
            "annotations": {EXPIRES_AT: "2000-01-01T00:00:00Z"},
            "labels": {MANAGED_BY: "helm"},
        }
        kube.create_object("ServiceAccount", "apps", {"metadata": meta})
        kube.create_object(
            "Role",
            "apps",
            {"metadata": {"name": "plain"}, "rules": []},
        )
        # Ours, but nobody knows when it expires: a human should look.
        kube.create_object(
            "ServiceAccount",
            "other",
            {
                "metadata": {"name": f"scanfleet-{NOEXP}", "labels": ours(NOEXP)},
                "automountServiceAccountToken": False,
            },
        )
        kube.create_object(
            "Role",
            "other",
            {
                "metadata": {
                    "name": f"scanfleet-{GARBLED}",
                    "labels": ours(GARBLED),
                    "annotations": {EXPIRES_AT: "next tuesday"},
                },
                "rules": role_rules("web"),
            },
        )
    finally:
        kube.close()


NOEXP, GARBLED = "0000000000000e01", "0000000000000e02"


def ours(scan_id: str) -> dict[str, str]:
    return {MANAGED_BY: "scanfleet", SCAN_ID_LABEL: scan_id}


def test_parse_expiry() -> None:
    assert parse_expiry("2025-01-01T00:00:00Z") == datetime(2025, 1, 1, tzinfo=UTC)
    assert parse_expiry("2025-01-01T01:00:00+01:00") == datetime(2025, 1, 1, tzinfo=UTC)
    assert parse_expiry("2025-01-01T00:00:00") is None  # no offset: never guess
    assert parse_expiry("soon") is None
    assert parse_expiry(None) is None
    assert parse_expiry("") is None


def test_janitor_removes_expired_orphans_and_nothing_else(
    two_clusters: tuple[FakeCluster, FakeCluster, Path],
) -> None:
    a, b, kubeconfig = two_clusters
    seed(a, kubeconfig, "east")
    seed(b, kubeconfig, "west")
    before_a, before_b = names(a), names(b)
    report = janitor_for_kubeconfig(str(kubeconfig), [], True, now=NOW)
    expired = triple("apps", DEAD1) | triple("other", DEAD2)
    assert names(a) == before_a - expired
    assert names(b) == before_b - expired
    assert triple("apps", LIVE1) <= names(a)
    assert ("serviceaccounts", "apps", "ci-deployer") in names(a)
    assert ("roles", "apps", "plain") in names(b)
    assert ("serviceaccounts", "other", f"scanfleet-{NOEXP}") in names(a)
    assert ("roles", "other", f"scanfleet-{GARBLED}") in names(b)
    assert report.ok
    assert len(report.deleted) == 12
    # Bindings go first: the grant disappears before the identity.
    order = [f.kind for f in report.deleted if f.context == "east"]
    assert order == ["RoleBinding"] * 2 + ["Role"] * 2 + ["ServiceAccount"] * 2
    assert {(w.context, w.name, w.reason) for w in report.warnings} == {
        (ctx, f"scanfleet-{NOEXP}", "no expires-at annotation") for ctx in ("east", "west")
    } | {(ctx, f"scanfleet-{GARBLED}", "unparseable expires-at") for ctx in ("east", "west")}
    assert report.kept == 6
    assert report.foreign == []
    # Every delete names the UID of the object that was listed.
    logged = [r for r in a.request_log if r.method == "DELETE"]
    assert all(r.body["preconditions"]["uid"] == r.old_object["metadata"]["uid"] for r in logged)
    # Nothing ever listed or deleted outside the label selector.
    for c in (a, b):
        deletes = [r for r in c.requests if r[0] == "DELETE"]
        assert deletes
        assert all("scanfleet-dead" in r[1] for r in deletes)
        assert not c.errors


def test_a_second_run_finds_nothing(
    two_clusters: tuple[FakeCluster, FakeCluster, Path],
) -> None:
    a, _, kubeconfig = two_clusters
    seed(a, kubeconfig, "east")
    janitor_for_kubeconfig(str(kubeconfig), ["east"], False, now=NOW)
    again = janitor_for_kubeconfig(str(kubeconfig), ["east"], False, now=NOW)
    assert again.deleted == []
    assert again.ok


def test_the_clock_decides(two_clusters: tuple[FakeCluster, FakeCluster, Path]) -> None:
    a, _, kubeconfig = two_clusters
    seed(a, kubeconfig, "east")
    clients = ClientCache(str(kubeconfig))
    try:
        later = run_janitor(["east"], clients.get, now=NOW + timedelta(hours=1))
    finally:
        clients.close()
    assert {f.name for f in later.deleted} == {
        f"scanfleet-{DEAD1}",
        f"scanfleet-{DEAD2}",
        f"scanfleet-{LIVE1}",
    }


def test_dry_run_deletes_nothing_but_lists_it(
    two_clusters: tuple[FakeCluster, FakeCluster, Path],
) -> None:
    a, b, kubeconfig = two_clusters
    seed(a, kubeconfig, "east")
    before = names(a)
    report = janitor_for_kubeconfig(str(kubeconfig), ["east"], False, now=NOW, dry_run=True)
    assert names(a) == before
    assert not [r for r in a.requests if r[0] == "DELETE"]
    assert {(f.kind, f.namespace, f.name) for f in report.deleted} == {
        (kind, ns, f"scanfleet-{s}")
        for ns, s in (("apps", DEAD1), ("other", DEAD2))
        for kind in ("RoleBinding", "Role", "ServiceAccount")
    }
    assert not b.requests  # only the chosen context is touched


def janitor_cli(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from scanfleet.cli import main; main()",
            "janitor",
            "--kubeconfig",
            str(kubeconfig),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        env={"PATH": "/usr/bin:/bin", "SCANFLEET_LOG_FORMAT": "console"},
    )


def test_cli_dry_run_then_real_run_over_two_contexts(
    two_clusters: tuple[FakeCluster, FakeCluster, Path],
) -> None:
    a, b, kubeconfig = two_clusters
    seed(a, kubeconfig, "east")
    seed(b, kubeconfig, "west")
    before_a, before_b = names(a), names(b)

    dry = janitor_cli(kubeconfig, "--all-contexts", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert f"would delete east: RoleBinding apps/scanfleet-{DEAD1} (expired " in dry.stdout
    assert f"would delete west: ServiceAccount other/scanfleet-{DEAD2}" in dry.stdout
    assert lines[-1] == "total: 12 would delete, 0 not ours"
    assert f"scanfleet-{LIVE1}" not in dry.stdout
    assert "ci-deployer" not in dry.stdout
    assert f"WARNING east: ServiceAccount other/scanfleet-{NOEXP}" in dry.stderr
    assert (names(a), names(b)) == (before_a, before_b)

    real = janitor_cli(kubeconfig, "--context", "east", "--context", "west", "--json")
    assert real.returncode == 0, real.stderr
    out = json.loads(real.stdout)
    assert out["total_deleted"] == 12
    assert not out["dry_run"]
    assert len(names(a)) == len(before_a) - 6


def test_one_failing_context_does_not_stop_the_others_and_exits_3(
    two_clusters: tuple[FakeCluster, FakeCluster, Path],
) -> None:
    a, b, kubeconfig = two_clusters
    seed(a, kubeconfig, "east")
    seed(b, kubeconfig, "west")
    a.fail("GET", r"serviceaccounts$", 403, times=10, message="janitor may not list")
    r = janitor_cli(kubeconfig, "--all-contexts")
    assert r.returncode == 3
    assert "ERROR context 'east'" in r.stderr
    assert "403" in r.stderr
    assert triple("apps", DEAD1) <= names(a)  # untouched: its listing failed
    assert not triple("apps", DEAD1) & names(b)  # west was still swept
    assert "total: 6 deleted" in r.stdout


def test_cli_rejects_unknown_context(
    two_clusters: tuple[FakeCluster, FakeCluster, Path],
) -> None:
    _, _, kubeconfig = two_clusters
    r = janitor_cli(kubeconfig, "--context", "north")
    assert r.returncode == 2
    assert "context 'north' not found" in r.stderr


# --- only what scanfleet made ------------------------------------------------------------------
DECOY = "dec0000000000001"
DECOY_NS = "dec0000000000002"


def expired_meta(name: str, scan_id: str) -> dict[str, Any]:
    return {
        "name": name,
        "labels": ours(scan_id),
        "annotations": {EXPIRES_AT: "2000-01-01T00:00:00Z"},
    }


def plant_decoys(kube: KubeClient) -> None:
    """Expired and labelled, but not scanfleet's shape."""
    # Right label, wrong name: someone labelled their own ServiceAccount.
    kube.create_object(
        "ServiceAccount",
        "apps",
        {"metadata": expired_meta("payments-api", DECOY), "automountServiceAccountToken": False},
    )
    # Right name, wrong rules.
    kube.create_object(
        "Role",
        "apps",
        {
            "metadata": expired_meta(f"scanfleet-{DECOY}", DECOY),
            "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}],
        },
    )
    # Right name, binds another role, or another subject.
    kube.create_object(
        "RoleBinding",
        "apps",
        {
            "metadata": expired_meta(f"scanfleet-{DECOY}", DECOY),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "cluster-admin",
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": f"scanfleet-{DECOY}", "namespace": "apps"}
            ],
        },
    )
    kube.create_object(
        "RoleBinding",
        "other",
        {
            "metadata": expired_meta(f"scanfleet-{DECOY}", DECOY),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": f"scanfleet-{DECOY}",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "payments-api", "namespace": "apps"}],
        },
    )
    # Exactly scanfleet's binding but for its subject's namespace: it grants the Role to a
    # ServiceAccount of another namespace (issue 17: a decoy the janitor must keep).
    kube.create_object(
        "RoleBinding",
        "apps",
        {
            "metadata": expired_meta(f"scanfleet-{DECOY_NS}", DECOY_NS),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": f"scanfleet-{DECOY_NS}",
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": f"scanfleet-{DECOY_NS}", "namespace": "other"}
            ],
        },
    )
    # Right name, wrong scan-id label.
    kube.create_object(
        "ServiceAccount",
        "other",
        {
            "metadata": expired_meta(f"scanfleet-{DECOY}", "0000000000000000"),
            "automountServiceAccountToken": False,
        },
    )


def test_labelled_objects_of_another_shape_are_reported_as_not_ours_and_kept(
    two_clusters: tuple[FakeCluster, FakeCluster, Path],
) -> None:
    a, _, kubeconfig = two_clusters
    kube = KubeClient(str(kubeconfig), "east")
    try:
        plant_decoys(kube)
    finally:
        kube.close()
    before = names(a)
    report = janitor_for_kubeconfig(str(kubeconfig), ["east"], False, now=NOW)
    assert names(a) == before
    assert report.deleted == []
    assert not [r for r in a.requests if r[0] == "DELETE"]
    reasons = {(f.kind, f.namespace, f.name): f.reason for f in report.foreign}
    assert reasons == {
        (
            "ServiceAccount",
            "apps",
            "payments-api",
        ): "not scanfleet's: its name is not scanfleet-<16 hex>",
        (
            "Role",
            "apps",
            f"scanfleet-{DECOY}",
        ): "not scanfleet's: its rules are not exactly the two pinned rules on one pod",
        ("RoleBinding", "apps", f"scanfleet-{DECOY}"): "not scanfleet's: it does not bind the "
        "Role of its name to the ServiceAccount of its name only",
        ("RoleBinding", "other", f"scanfleet-{DECOY}"): "not scanfleet's: it does not bind the "
        "Role of its name to the ServiceAccount of its name only",
        ("RoleBinding", "apps", f"scanfleet-{DECOY_NS}"): "not scanfleet's: it does not bind "
        "the Role of its name to the ServiceAccount of its name only",
        ("ServiceAccount", "other", f"scanfleet-{DECOY}"): "not scanfleet's: its labels do not "
        "carry managed-by scanfleet and the scan-id of its name",
    }
    # The CLI says so too, in both forms, and a dry run counts them.
    dry = janitor_cli(kubeconfig, "--context", "east", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[-1] == "total: 0 would delete, 6 not ours"
    assert "NOT OURS east: ServiceAccount apps/payments-api: not scanfleet's" in dry.stderr
    out = json.loads(janitor_cli(kubeconfig, "--context", "east", "--json", "--dry-run").stdout)
    assert out["total_foreign"] == 6
    assert {f["name"] for f in out["foreign"]} == {
        "payments-api",
        f"scanfleet-{DECOY}",
        f"scanfleet-{DECOY_NS}",
    }
    assert names(a) == before


class ReplacingClient:
    """Lists like KubeClient, then replaces every listed object (same everything, new UID)
    before the janitor gets to delete it: as another scan re-creating its identity would."""

    def __init__(self, kube: KubeClient) -> None:
        self.kube = kube

    def list_labelled(self, kind: str, selector: str) -> list[dict[str, Any]]:
        listed = self.kube.list_labelled(kind, selector)
        for obj in listed:
            body = {
                k: v
                for k, v in obj.items()
                if k in ("metadata", "rules", "roleRef", "subjects", "automountServiceAccountToken")
            }
            body["metadata"] = {
                k: v for k, v in obj["metadata"].items() if k in ("name", "labels", "annotations")
            }
            self.kube.delete(kind, obj["namespace"], obj["name"])
            self.kube.create_object(kind, obj["namespace"], body)
        return listed

    def delete(
        self,
        kind: str,
        namespace: str,
        name: str,
        *,
        uid: str | None = None,
        background: bool = False,
    ) -> bool:
        return self.kube.delete(kind, namespace, name, uid=uid, background=background)


def test_an_object_replaced_between_list_and_delete_is_not_deleted(
    two_clusters: tuple[FakeCluster, FakeCluster, Path],
) -> None:
    a, _, kubeconfig = two_clusters
    kube = KubeClient(str(kubeconfig), "east")
    try:
        leave_orphans(kube, "apps", DEAD1, "run1", NOW - timedelta(hours=2), 3600)
        report = run_janitor(["east"], lambda _ctx: ReplacingClient(kube), now=NOW)
    finally:
        kube.close()
    assert report.deleted == []
    assert {f.kind for f in report.changed} == {"ServiceAccount", "Role", "RoleBinding"}
    assert all("it was replaced since it was read" in f.reason for f in report.changed)
    assert triple("apps", DEAD1) <= names(a)
    conflicts = [r for r in a.request_log if r.method == "DELETE" and r.code == 409]
    assert len(conflicts) == 3


# --- early revoke (fleet) ------------------------------------------------------------------------
IDLE, BUSY, CLI_SCAN, YOUNG = (
    "1d1e000000000001",
    "b0050000000000b1",
    "c11000000000c001",
    "0000000000000f01",
)


def test_a_fleet_identity_whose_scan_holds_no_lease_is_revoked_before_its_expiry(
    two_clusters: tuple[FakeCluster, FakeCluster, Path],
) -> None:
    import fakeredis

    from scanfleet.identity.janitor import EarlyRevoke
    from scanfleet.store.slots import RedisSlots
    from scanfleet.store.state import RunStore

    a, _, kubeconfig = two_clusters
    store = RunStore(fakeredis.FakeRedis(decode_responses=True), "sf", retention_days=1)
    slots = RedisSlots(store, cap=4, lease_seconds=60, wait_seconds=0)
    assert slots.try_acquire("east", BUSY)  # this scan is running: its lease is live
    kube = KubeClient(str(kubeconfig), "east")
    try:
        created = datetime.now(UTC)  # the fake stamps creationTimestamp with the real clock
        for scan_id, run in ((IDLE, "fleet-run"), (BUSY, "fleet-run"), (CLI_SCAN, "cli-run")):
            leave_orphans(kube, "apps", scan_id, run, created, 3600)
        clients = ClientCache(str(kubeconfig))
        early = EarlyRevoke(
            slots, fleet_run=lambda run_id: run_id == "fleet-run", min_age=timedelta(minutes=5)
        )
        try:
            young = run_janitor(
                ["east"], clients.get, now=created + timedelta(minutes=2), early=early
            )
            assert young.deleted == []  # two minutes old: its scan may still be starting
            report = run_janitor(
                ["east"], clients.get, now=created + timedelta(minutes=10), early=early
            )
            without = run_janitor(["east"], clients.get, now=created + timedelta(minutes=10))
        finally:
            clients.close()
    finally:
        kube.close()
    assert {(f.kind, f.name, f.reason) for f in report.deleted} == {
        (k, f"scanfleet-{IDLE}", "its fleet scan holds no live lease")
        for k in ("RoleBinding", "Role", "ServiceAccount")
    }
    assert report.kept == 6  # the running fleet scan's and the CLI scan's, unexpired
    assert without.deleted == []  # without the fleet's leases, only expiry counts
    assert triple("apps", BUSY) | triple("apps", CLI_SCAN) <= names(a)
    assert not triple("apps", IDLE) & names(a)


def test_ownerless_leftovers_are_judged_by_their_expiry(
    two_clusters: tuple[FakeCluster, FakeCluster, Path],
) -> None:
    # A slow garbage collector: the ServiceAccount is gone, its Role and RoleBinding linger.
    a, _, kubeconfig = two_clusters
    a.pause_gc()
    kube = KubeClient(str(kubeconfig), "east")
    try:
        leave_orphans(kube, "apps", DEAD1, "run1", NOW - timedelta(minutes=30), 3600)
        kube.delete("ServiceAccount", "apps", f"scanfleet-{DEAD1}", background=True)
    finally:
        kube.close()
    assert names(a) == triple("apps", DEAD1) - {("serviceaccounts", "apps", f"scanfleet-{DEAD1}")}
    early = janitor_for_kubeconfig(str(kubeconfig), ["east"], False, now=NOW)
    assert (early.deleted, early.foreign, early.kept) == ([], [], 2)
    late = janitor_for_kubeconfig(str(kubeconfig), ["east"], False, now=NOW + timedelta(hours=1))
    assert {(f.kind, f.reason) for f in late.deleted} == {
        ("RoleBinding", "expired"),
        ("Role", "expired"),
    }
    assert names(a) == set()
    a.collect_garbage()
