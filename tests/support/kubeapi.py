"""The official Kubernetes client and kubectl against the fake API server; shared by the
fake's own tests and the auditor tests."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.support.tools import require_tool

SCANFLEET = {"app.kubernetes.io/managed-by": "scanfleet"}


@contextlib.contextmanager
def api_client(kubeconfig: Path, context: str = "fake") -> Iterator[client.ApiClient]:
    with config.new_client_from_config(config_file=str(kubeconfig), context=context) as api:
        yield api


def kubectl(kubeconfig: Path, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    cache = kubeconfig.parent / "kubectl-cache"
    proc = subprocess.run(
        [
            require_tool("kubectl"),
            "--kubeconfig",
            str(kubeconfig),
            "--cache-dir",
            str(cache),
            "--request-timeout",
            "20s",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def status_body(exc: ApiException) -> dict[str, Any]:
    body = json.loads(exc.body)
    assert body["kind"] == "Status"
    assert body["apiVersion"] == "v1"
    assert body["status"] == "Failure"
    assert body["code"] == exc.status
    return body


def sa_body(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "automountServiceAccountToken": False,
    }


def mint_scoped_token(
    api: client.ApiClient,
    namespace: str,
    pod: str,
    name: str = "scan-1",
) -> str:
    """What scanfleet does per scan: SA + Role pinned to one pod + RoleBinding + token."""
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(namespace, sa_body(name, SCANFLEET))
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": name, "labels": SCANFLEET},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["pods"],
                    "verbs": ["get"],
                    "resourceNames": [pod],
                },
                {
                    "apiGroups": [""],
                    "resources": ["pods/exec"],
                    "verbs": ["create", "get"],
                    "resourceNames": [pod],
                },
            ],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": name, "labels": SCANFLEET},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    )
    tr = core.create_namespaced_service_account_token(
        name, namespace, {"spec": {"expirationSeconds": 3600}}
    )
    return str(tr.status.token)
