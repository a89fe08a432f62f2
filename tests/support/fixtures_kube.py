"""Fixtures for the fake Kubernetes API server (``scanfleet/testing/fakekube``).

- ``make_cluster(tls=True, name="fake")``: start another ``FakeCluster`` (stopped at teardown,
  after failing the test if scanfleet RBAC objects are left in it: see ``leftovers.py``).
- ``fake_cluster``: a started TLS cluster seeded with namespace ``apps`` (Running pod ``web``
  with containers ``app`` and ``sidecar`` and init container ``init-db``; Pending pod
  ``pending``; a Secret ``db-password``) and an empty namespace ``other``.
- ``admin_kubeconfig``: path of an admin kubeconfig for ``fake_cluster``, context ``fake``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scanfleet.kube.client import KubeClient
from scanfleet.testing.fakekube import FakeCluster
from tests.support import leftovers


@pytest.fixture
def make_cluster(request: pytest.FixtureRequest) -> Iterator[Callable[..., FakeCluster]]:
    started: list[FakeCluster] = []

    def factory(tls: bool = True, name: str = "fake") -> FakeCluster:
        cluster = FakeCluster(tls=tls, name=name).start()
        started.append(cluster)
        return cluster

    yield factory
    try:
        leftovers.fail_on(request, "scanfleet RBAC objects", leftovers.rbac_left(started))
    finally:
        for cluster in started:
            cluster.stop()


def seed_default(cluster: FakeCluster) -> FakeCluster:
    """The standard seed used by ``fake_cluster`` (usable on ``make_cluster`` results)."""
    cluster.add_namespace("apps")
    cluster.add_namespace("other")
    cluster.add_pod(
        "apps",
        "web",
        containers=[
            ("app", "registry.example/web:1.4", None),
            ("sidecar", "registry.example/proxy:2.0", None),
        ],
        init_containers=["init-db"],
        labels={"app": "web", "tier": "frontend"},
    )
    cluster.add_pod("apps", "pending", containers=["app"], phase="Pending", labels={"app": "batch"})
    cluster.add_secret("apps", "db-password")
    return cluster


@pytest.fixture
def fake_cluster(make_cluster: Callable[..., FakeCluster]) -> FakeCluster:
    return seed_default(make_cluster())


@pytest.fixture
def admin_kubeconfig(fake_cluster: FakeCluster, tmp_path: Path) -> Path:
    return fake_cluster.write_kubeconfig(tmp_path / "kube" / "config", context="fake")


@pytest.fixture
def kube(fake_cluster: FakeCluster, admin_kubeconfig: Path) -> Iterator[KubeClient]:
    """scanfleet's client of the fake cluster, as the admin; no scanfleet object may outlive
    the test."""
    client = KubeClient(str(admin_kubeconfig), "fake")
    yield client
    client.close()
    assert fake_cluster.scanfleet_objects() == []
