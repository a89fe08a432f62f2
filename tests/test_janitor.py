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
from fakekube import FakeCluster, write_kubeconfig
from fixtures_ops import leave_orphans

from scanfleet.identity import EXPIRES_AT, MANAGED_BY
from scanfleet.janitor import janitor_for_kubeconfig, parse_expiry, run_janitor
from scanfleet.kube import ClientCache, KubeClient

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


def seed(cluster: FakeCluster, kubeconfig: Path, context: str) -> None:
    """What a fleet leaves behind: killed scans, a running scan, and things not ours."""
    kube = KubeClient(str(kubeconfig), context)
    try:
        # Killed two hours ago with a one-hour token: expired an hour ago.
        leave_orphans(kube, "apps", "dead1", "run1", NOW - timedelta(hours=2), 3600)
        leave_orphans(kube, "other", "dead2", "run1", NOW - timedelta(hours=5), 3600)
        # A scan still running: expires in 50 minutes.
        leave_orphans(kube, "apps", "live1", "run2", NOW - timedelta(minutes=10), 3600)
        # Not ours: no label, even with an expired-looking annotation.
        meta: dict[str, Any] = {
            "name": "ci-deployer",
            "annotations": {EXPIRES_AT: "2000-01-01T00:00:00Z"},
            "labels": {MANAGED_BY: "helm"},
        }
        kube.create_service_account("apps", {"metadata": meta})
        kube.create_role(
            "apps",
            {"metadata": {"name": "plain"}, "rules": []},
        )
        # Ours, but nobody knows when it expires: a human should look.
        kube.create_service_account(
            "other",
            {"metadata": {"name": "scanfleet-noexpiry", "labels": {MANAGED_BY: "scanfleet"}}},
        )
        kube.create_role(
            "other",
            {
                "metadata": {
                    "name": "scanfleet-garbled",
                    "labels": {MANAGED_BY: "scanfleet"},
                    "annotations": {EXPIRES_AT: "next tuesday"},
                },
                "rules": [],
            },
        )
    finally:
        kube.close()


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
    expired = triple("apps", "dead1") | triple("other", "dead2")
    assert names(a) == before_a - expired
    assert names(b) == before_b - expired
    assert triple("apps", "live1") <= names(a)
    assert ("serviceaccounts", "apps", "ci-deployer") in names(a)
    assert ("roles", "apps", "plain") in names(b)
    assert ("serviceaccounts", "other", "scanfleet-noexpiry") in names(a)
    assert ("roles", "other", "scanfleet-garbled") in names(b)
    assert report.ok
    assert len(report.deleted) == 12
    # Bindings go first: the grant disappears before the identity.
    order = [f.kind for f in report.deleted if f.context == "east"]
    assert order == ["RoleBinding"] * 2 + ["Role"] * 2 + ["ServiceAccount"] * 2
    assert {(w.context, w.name, w.reason) for w in report.warnings} == {
        (ctx, "scanfleet-noexpiry", "no expires-at annotation") for ctx in ("east", "west")
    } | {(ctx, "scanfleet-garbled", "unparseable expires-at") for ctx in ("east", "west")}
    assert report.kept == 6
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
        "scanfleet-dead1",
        "scanfleet-dead2",
        "scanfleet-live1",
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
        ("RoleBinding", ns, f"scanfleet-{s}") for ns, s in (("apps", "dead1"), ("other", "dead2"))
    } | {("Role", ns, f"scanfleet-{s}") for ns, s in (("apps", "dead1"), ("other", "dead2"))} | {
        ("ServiceAccount", ns, f"scanfleet-{s}")
        for ns, s in (("apps", "dead1"), ("other", "dead2"))
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
    assert "would delete east: RoleBinding apps/scanfleet-dead1 (expired " in dry.stdout
    assert "would delete west: ServiceAccount other/scanfleet-dead2" in dry.stdout
    assert lines[-1] == "total: 12 would delete"
    assert "scanfleet-live1" not in dry.stdout
    assert "ci-deployer" not in dry.stdout
    assert "WARNING east: ServiceAccount other/scanfleet-noexpiry" in dry.stderr
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
    assert triple("apps", "dead1") <= names(a)  # untouched: its listing failed
    assert not triple("apps", "dead1") & names(b)  # west was still swept
    assert "total: 6 deleted" in r.stdout


def test_cli_rejects_unknown_context(
    two_clusters: tuple[FakeCluster, FakeCluster, Path],
) -> None:
    _, _, kubeconfig = two_clusters
    r = janitor_cli(kubeconfig, "--context", "north")
    assert r.returncode == 2
    assert "context 'north' not found" in r.stderr
