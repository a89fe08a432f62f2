"""The fake API server's pod-bound tokens (TokenRequest `boundObjectRef`), as kube-apiserver:

a token can be bound only to a pod that exists (404) and runs as the token's ServiceAccount
(400) — which is why scanfleet cannot bind its scan tokens to the target pod, which runs as
its own ServiceAccount, and compares pod UIDs instead — and a bound token stops
authenticating (401) once that pod is gone or replaced.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import CoreV1Api
from kubernetes.client.exceptions import ApiException

from scanfleet.core.errors import ClusterForbidden
from scanfleet.kube.client import KubeClient
from scanfleet.kube.scan_client import ScanClient
from scanfleet.testing.fakekube import FakeCluster
from tests.support.kubeapi import api_client

SA = "scanfleet-00000000000000b0"


@pytest.fixture
def kube(fake_cluster: FakeCluster, admin_kubeconfig: Path) -> Iterator[KubeClient]:
    client = KubeClient(str(admin_kubeconfig), "fake")
    client.create_object("ServiceAccount", "apps", {"metadata": {"name": SA}})
    client.create_object(
        "Role",
        "apps",
        {
            "metadata": {"name": SA},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
        },
    )
    client.create_object(
        "RoleBinding",
        "apps",
        {
            "metadata": {"name": SA},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": SA},
            "subjects": [{"kind": "ServiceAccount", "name": SA, "namespace": "apps"}],
        },
    )
    yield client
    for kind in ("RoleBinding", "Role", "ServiceAccount"):
        client.delete(kind, "apps", SA)
    client.close()


@pytest.fixture
def core(kube: KubeClient, admin_kubeconfig: Path) -> Iterator[CoreV1Api]:
    """The official client's CoreV1Api, as admin (scanfleet's own requests never use it)."""
    with api_client(admin_kubeconfig) as api:
        yield CoreV1Api(api)


def bound_token(core: CoreV1Api, pod: str) -> Any:
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "expirationSeconds": 900,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod},
        },
    }
    return core.create_namespaced_service_account_token(SA, "apps", body)


def test_a_token_cannot_be_bound_to_a_missing_pod(core: CoreV1Api) -> None:
    with pytest.raises(ApiException) as info:
        bound_token(core, "ghost")
    assert info.value.status == 404


def test_a_token_cannot_be_bound_to_a_pod_running_as_another_serviceaccount(
    core: CoreV1Api,
) -> None:
    with pytest.raises(ApiException) as info:
        bound_token(core, "web")  # runs as "default", like every target pod
    assert info.value.status == 400
    assert "to pod running with different serviceaccount name" in str(info.value.body)


def test_a_bound_token_dies_with_its_pod(
    kube: KubeClient, core: CoreV1Api, fake_cluster: FakeCluster
) -> None:
    fake_cluster.add_pod("apps", "job", containers=["app"], service_account=SA)
    resp = bound_token(core, "job")
    client = ScanClient(kube.endpoint(), resp.status.token, "fake")
    try:
        assert client.read_pod("apps", "web").name == "web"
        fake_cluster.delete_pod("apps", "job")
        fake_cluster.add_pod("apps", "job", containers=["app"], service_account=SA)
        with pytest.raises(ClusterForbidden, match="HTTP 401"):
            client.read_pod("apps", "web")
    finally:
        client.close()
        fake_cluster.delete_pod("apps", "job")
