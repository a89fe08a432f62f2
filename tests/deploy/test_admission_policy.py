"""deploy/admission-policy.yaml against what scanfleet really sends, and against attacks.

The policy's CEL (matchConditions, variables, validations) is evaluated with cel-python
(tests/support/admission.py, which lists how admission attributes are built from the fake API
server's request log and what is not modelled). Three real runs against the fake cluster —
one `scanfleet scan`, one `scanfleet janitor` pass over expired leftovers, one fleet run
(`submit --local` over two clusters: discovery, then a scan per container) — are replayed
as if the worker's ServiceAccount had sent them: every request must be admitted. A fleet
run through Redis and a real `scanfleet worker` is replayed the same way. A list of
attack requests must each be denied.

The first test also counts the API requests of one successful scan (SCAN_REQUESTS) with an
auditor that makes no API request of its own, so the count is scanfleet's alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from scanfleet.kube.client import KubeClient
from scanfleet.testing.fakekube import FakeCluster, LoggedRequest
from tests.support.admission import (
    API_AUDIENCES,
    WORKER,
    Policy,
    admission_request,
    admit,
    load_policies,
)
from tests.support.fixtures_fleet import FleetClusters, Worker, free_port
from tests.support.fixtures_ops import leave_orphans
from tests.support.paths import ROOT

POLICY_FILE = ROOT / "deploy" / "admission-policy.yaml"
CLI = [sys.executable, "-c", "from scanfleet.cli import main; main()"]
# API requests of one successful `scanfleet scan` of one container (create SA, TokenRequest,
# create Role, RoleBinding, read the pod with the scan token, delete SA: the GC does the rest).
SCAN_REQUESTS = 6
HEX = "0123456789abcdef"
NAME = f"scanfleet-{HEX}"
RBAC = "rbac.authorization.k8s.io"


@pytest.fixture(scope="module")
def policies() -> list[Policy]:
    loaded = load_policies(POLICY_FILE)
    assert {p.name for p in loaded} == {"scanfleet-worker", "scanfleet-scan-identities"}
    return loaded


def cli_env(tmp_path: Path, kubeconfig: Path, auditor: str, **extra: str) -> dict[str, str]:
    """The CLI's environment; the sandbox allow-lists come from the `standin_auditor` fixture."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k.startswith("SCANFLEET_SANDBOX_") or not k.startswith(("SCANFLEET_", "KUBECONFIG"))
    }
    env.update(
        {
            "SCANFLEET_AUDITOR": auditor,
            "SCANFLEET_RESULTS_DIR": str(tmp_path / "r"),
            "SCANFLEET_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0",
            "SCANFLEET_LOG_FORMAT": "json",
            "KUBECONFIG": str(kubeconfig),
            **extra,
        }
    )
    return env


def run(args: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*CLI, *args], env=dict(env), capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture
def scan_log(
    fake_cluster: FakeCluster, admin_kubeconfig: Path, tmp_path: Path, standin_auditor: str
) -> list[LoggedRequest]:
    fake_cluster.clear_request_log()
    run(
        ["scan", "apps/web/app", "--profile", "profile-dir", "--output", str(tmp_path / "out")],
        cli_env(tmp_path, admin_kubeconfig, standin_auditor),
    )
    assert fake_cluster.scanfleet_objects() == []
    return fake_cluster.request_log


@pytest.fixture
def janitor_log(
    fake_cluster: FakeCluster, admin_kubeconfig: Path, tmp_path: Path, standin_auditor: str
) -> list[LoggedRequest]:
    kube = KubeClient(str(admin_kubeconfig), "fake")
    try:
        past = datetime.now(UTC) - timedelta(hours=3)
        for ns, scan_id in (("apps", "0a1b2c3d4e5f6071"), ("other", "8091a2b3c4d5e6f7")):
            leave_orphans(kube, ns, scan_id, "run1", past, 3600)
    finally:
        kube.close()
    fake_cluster.clear_request_log()
    run(["janitor"], cli_env(tmp_path, admin_kubeconfig, standin_auditor))
    assert fake_cluster.scanfleet_objects() == []
    return fake_cluster.request_log


@pytest.fixture
def fleet_log(
    fleet_clusters: FleetClusters, tmp_path: Path, standin_auditor: str
) -> list[LoggedRequest]:
    env = cli_env(tmp_path, fleet_clusters.kubeconfig, standin_auditor)
    run(["submit", *DISCOVER, "--local", "--concurrency", "4"], env)
    return [r for c in fleet_clusters.all.values() for r in c.request_log]


DISCOVER = [
    "--all-contexts",
    "--all-namespaces",
    "--exclude-namespace",
    "kube-system",
    "--profile",
    "profile-x",
]


@pytest.fixture
def worker_fleet_log(
    fleet_clusters: FleetClusters, fleet_env: dict[str, str], make_worker: Callable[..., Worker]
) -> list[LoggedRequest]:
    """A fleet run through the broker and a real `scanfleet worker`."""
    make_worker(fleet_env, concurrency=2)
    run([*["submit", *DISCOVER], "--wait"], fleet_env)
    return [r for c in fleet_clusters.all.values() for r in c.request_log]


def sequence(log: list[LoggedRequest]) -> list[str]:
    return [
        f"{r.short} [{r.code}]" + (" (scan token)" if r.identity != "fake-admin" else "")
        for r in log
    ]


# --- request count ---------------------------------------------------------------------------
def scanfleet_requests(log: list[LoggedRequest]) -> list[LoggedRequest]:
    """scanfleet's own requests: the stand-in auditor's kubectl (discovery, get, exec) is not."""
    return [r for r in log if not r.user_agent.startswith("kubectl")]


def test_one_scan_costs_a_known_number_of_api_requests(scan_log: list[LoggedRequest]) -> None:
    everything = scanfleet_requests(scan_log)
    assert len(everything) < len(scan_log), "the stand-in auditor made no request"
    # One preflight per context and run (`scan`/`submit` check that the API server answers
    # before anything is created): an unauthenticated GET /version, not part of the scan.
    preflight = [r for r in everything if r.path == "/version"]
    assert [(r.method, r.identity) for r in preflight] == [("GET", "")], sequence(preflight)
    ours = [r for r in everything if r.path != "/version"]
    assert len(ours) == SCAN_REQUESTS, "\n".join(sequence(ours))
    assert all(r.code is not None and r.code < 300 for r in ours), sequence(ours)


# --- (a) everything scanfleet does is admitted --------------------------------------------------
def admitted(policies: list[Policy], log: list[LoggedRequest]) -> int:
    """Replay the admin credential's requests as the worker (a scan token's, the auditor's
    exec included, are not the worker's); fail on any denial; return how many admission saw."""
    seen = 0
    for r in log:
        if r.identity.startswith("system:serviceaccount:"):
            continue
        attrs = admission_request(r, as_user=WORKER)
        if attrs is None:
            continue
        seen += 1
        denied = [d for d in admit(policies, attrs) if not d.allowed]
        assert denied == [], f"{r.short}: {denied}"
    return seen


def test_a_scan_is_admitted(policies: list[Policy], scan_log: list[LoggedRequest]) -> None:
    # SA, TokenRequest, Role and RoleBinding (owned by the SA), one SA delete; the pod read is
    # the scan token's, not the worker's.
    assert admitted(policies, scan_log) == 5
    owned = [r for r in scan_log if r.method == "POST" and r.resource in ("roles", "rolebindings")]
    assert len(owned) == 2
    assert all(r.body["metadata"]["ownerReferences"][0]["kind"] == "ServiceAccount" for r in owned)


def test_a_janitor_pass_is_admitted(
    policies: list[Policy], janitor_log: list[LoggedRequest]
) -> None:
    deletes = [r for r in janitor_log if r.method == "DELETE"]
    assert len(deletes) == 6
    assert admitted(policies, janitor_log) == 6


def test_a_fleet_run_is_admitted(policies: list[Policy], fleet_log: list[LoggedRequest]) -> None:
    assert admitted(policies, fleet_log) == 8 * 5  # 8 containers over two clusters


def test_a_fleet_run_with_a_worker_is_admitted(
    policies: list[Policy], worker_fleet_log: list[LoggedRequest]
) -> None:
    assert admitted(policies, worker_fleet_log) == 8 * 5


def test_the_policy_binds_only_the_worker(
    policies: list[Policy], scan_log: list[LoggedRequest]
) -> None:
    """Not replayed as the worker, the same requests are not the policy's business."""
    for r in scan_log:
        attrs = admission_request(r)
        if attrs is not None:
            assert all(not d.applies for d in admit(policies, attrs)), r.short


# --- (b) attacks are denied --------------------------------------------------------------------
def labels(name: str = NAME) -> dict[str, str]:
    return {
        "app.kubernetes.io/managed-by": "scanfleet",
        "scanfleet.io/scan-id": name.removeprefix("scanfleet-"),
    }


def req(
    method: str,
    resource: str,
    namespace: str,
    name: str = "",
    *,
    group: str = "",
    sub: str = "",
    body: Any = None,
    old: Any = None,
    user: str = WORKER,
    query: tuple[tuple[str, str], ...] = (),
) -> LoggedRequest:
    verb = {"POST": "create", "PUT": "update", "DELETE": "delete", "GET": "get"}[method]
    return LoggedRequest(
        method,
        "/synthetic",
        user,
        verb=verb,
        group=group,
        resource=resource,
        subresource=sub,
        namespace=namespace,
        name=name,
        groups=("system:authenticated",),
        body=body,
        old_object=old,
        query=query,
    )


def rules(
    pod: str = "web",
    pod2: str | None = None,
    get: tuple[str, ...] = ("get",),
    extra: tuple[dict[str, Any], ...] = (),
) -> list[dict[str, Any]]:
    return [
        {"apiGroups": [""], "resources": ["pods"], "verbs": list(get), "resourceNames": [pod]},
        {
            "apiGroups": [""],
            "resources": ["pods/exec"],
            "verbs": ["create", "get"],
            "resourceNames": [pod2 or pod],
        },
        *extra,
    ]


def role(name: str = NAME, **kw: Any) -> LoggedRequest:
    return req(
        "POST",
        "roles",
        "apps",
        group=RBAC,
        body={"metadata": {"name": name, "labels": labels(name)}, "rules": rules(**kw)},
    )


def binding(
    role_ref: dict[str, str] | None = None, subjects: list[dict[str, str]] | None = None
) -> LoggedRequest:
    return req(
        "POST",
        "rolebindings",
        "apps",
        group=RBAC,
        body={
            "metadata": {"name": NAME, "labels": labels()},
            "roleRef": role_ref or {"apiGroup": RBAC, "kind": "Role", "name": NAME},
            "subjects": subjects or [{"kind": "ServiceAccount", "name": NAME, "namespace": "apps"}],
        },
    )


def sa(
    name: str = NAME,
    lbl: dict[str, str] | None = None,
    metadata_extra: dict[str, str] | None = None,
    **fields: Any,
) -> LoggedRequest:
    """A scan ServiceAccount as scanfleet creates it, with `metadata_extra` annotations."""
    annotations = {
        "scanfleet.io/expires-at": "2026-03-01T11:00:00Z",
        "scanfleet.io/target": "c/apps/web/app",
        **(metadata_extra or {}),
    }
    body = {
        "metadata": {
            "name": name,
            "labels": labels(name) if lbl is None else lbl,
            "annotations": annotations,
        },
        "automountServiceAccountToken": False,
        **fields,
    }
    return req("POST", "serviceaccounts", "apps", body=body)


def token(
    namespace: str, name: str, seconds: int = 3600, audiences: list[str] | None = None
) -> LoggedRequest:
    spec: dict[str, Any] = {"expirationSeconds": seconds}
    if audiences is not None:
        spec["audiences"] = audiences
    return req("POST", "serviceaccounts", namespace, name, sub="token", body={"spec": spec})


def delete(
    resource: str, namespace: str, name: str, lbl: dict[str, str] | None, group: str = ""
) -> LoggedRequest:
    old = {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": "u-1",
            **({"labels": lbl} if lbl is not None else {}),
        }
    }
    return req("DELETE", resource, namespace, name, group=group, old=old)


def pod(sa_name: str, method: str = "POST", user: str = "alice") -> LoggedRequest:
    body = {
        "metadata": {"name": "borrower"},
        "spec": {"serviceAccountName": sa_name, "containers": [{"name": "c", "image": "x"}]},
    }
    return req(
        method,
        "pods",
        "apps",
        "borrower" if method == "PUT" else "",
        body=body,
        old=body if method == "PUT" else None,
        user=user,
    )


# What each denial must say: every validation is the reason for at least one attack.
SHAPE = "named scanfleet-<16 hex>"
ROLE = "exactly two rules on one pod"
BINDING = "binds Role scanfleet-X to ServiceAccount scanfleet-X"
LABELS = "carry app.kubernetes.io/managed-by=scanfleet"
POD = "no pod may run as a scanfleet-* ServiceAccount"
AUDIENCE = "carry only the API server's own audience"
CLOUD = "no annotations or labels but scanfleet's own"
SCANFLEET_LABEL = {"app.kubernetes.io/managed-by": "scanfleet"}
ATTACKS: dict[str, tuple[LoggedRequest, str]] = {
    "token for a kube-system controller": (
        token("kube-system", "generic-garbage-collector"),
        SHAPE,
    ),
    "token for the worker itself": (token("scanfleet", "scanfleet"), SHAPE),
    "token for a year": (token("apps", NAME, 365 * 86400), "at most 24 hours"),
    "token for a day and a second": (token("apps", NAME, 86401), "at most 24 hours"),
    "token for vault": (token("apps", NAME, audiences=["vault"]), AUDIENCE),
    "token for AWS STS": (token("apps", NAME, audiences=["sts.amazonaws.com"]), AUDIENCE),
    "token for GCP workload identity": (
        token("apps", NAME, audiences=["my-project.svc.id.goog"]),
        AUDIENCE,
    ),
    "token for the API server and vault": (
        token("apps", NAME, audiences=[*API_AUDIENCES, "vault"]),
        AUDIENCE,
    ),
    "service account with an IRSA role": (
        sa(metadata_extra={"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/admin"}),
        CLOUD,
    ),
    "service account with a GKE identity": (
        sa(metadata_extra={"iam.gke.io/gcp-service-account": "x@p.iam.gserviceaccount.com"}),
        CLOUD,
    ),
    "service account with an Azure workload identity": (
        sa(metadata_extra={"azure.workload.identity/client-id": "00000000-0000-0000-0000-0"}),
        CLOUD,
    ),
    "service account with any other annotation": (
        sa(metadata_extra={"example.com/anything": "x"}),
        CLOUD,
    ),
    "service account with the Azure workload identity label": (
        sa(lbl={**labels(), "azure.workload.identity/use": "true"}),
        CLOUD,
    ),
    "role with * verbs": (role(get=("*",)), ROLE),
    "role with an extra rule": (
        role(extra=({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},)),
        ROLE,
    ),
    "role on two pods": (role(pod2="db"), ROLE),
    "role without resourceNames": (
        req(
            "POST",
            "roles",
            "apps",
            group=RBAC,
            body={
                "metadata": {"name": NAME, "labels": labels()},
                "rules": [
                    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
                    {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create", "get"]},
                ],
            },
        ),
        ROLE,
    ),
    "rolebinding to cluster-admin": (
        binding({"apiGroup": RBAC, "kind": "ClusterRole", "name": "cluster-admin"}),
        BINDING,
    ),
    "rolebinding to another service account": (
        binding(subjects=[{"kind": "ServiceAccount", "name": "default", "namespace": "apps"}]),
        BINDING,
    ),
    "rolebinding to a subject in kube-system": (
        binding(subjects=[{"kind": "ServiceAccount", "name": NAME, "namespace": "kube-system"}]),
        BINDING,
    ),
    "rolebinding to a group": (
        binding(subjects=[{"kind": "Group", "name": "system:masters", "apiGroup": RBAC}]),
        BINDING,
    ),
    "delete of a labelled payments-api": (
        delete("serviceaccounts", "payments", "payments-api", SCANFLEET_LABEL),
        SHAPE,
    ),
    "delete of a labelled system:controller binding": (
        delete(
            "rolebindings",
            "kube-system",
            "system:controller:bootstrap-signer",
            SCANFLEET_LABEL,
            RBAC,
        ),
        SHAPE,
    ),
    "delete of an unlabelled scanfleet-shaped object": (
        delete("roles", "apps", NAME, None, RBAC),
        LABELS,
    ),
    "scanfleet-looking name, wrong shape": (sa("scanfleet-xyz"), SHAPE),
    "scanfleet name, 17 hex digits": (sa(NAME + "0"), SHAPE),
    "scan-id label disagreeing with the name": (sa(lbl=labels("scanfleet-" + "f" * 16)), LABELS),
    "service account that mounts its token": (
        sa(automountServiceAccountToken=True),
        "mounts no token",
    ),
    "service account with image pull secrets": (
        sa(imagePullSecrets=[{"name": "registry"}]),
        "mounts no token",
    ),
    "owner reference to a Deployment": (
        req(
            "POST",
            "roles",
            "apps",
            group=RBAC,
            body={
                "metadata": {
                    "name": NAME,
                    "labels": labels(),
                    "ownerReferences": [
                        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "u"}
                    ],
                },
                "rules": rules(),
            },
        ),
        "owned by the ServiceAccount",
    ),
    "update of a scan role": (
        req(
            "PUT",
            "roles",
            "apps",
            NAME,
            group=RBAC,
            body={"metadata": {"name": NAME}, "rules": rules()},
            old={"metadata": {"name": NAME, "labels": labels()}},
        ),
        "never updates",
    ),
    "worker execs into a pod": (
        req(
            "GET",
            "pods",
            "apps",
            "web",
            sub="exec",
            query=(("command", "sh"), ("container", "app")),
        ),
        "never execs",
    ),
    "pod running as a scan identity": (pod(NAME), POD),
    "pod running as any scanfleet- account": (pod("scanfleet-helper"), POD),
    "pod update keeping a scan identity": (pod(NAME, method="PUT"), POD),
    "worker creates a pod as a scan identity": (pod(NAME, user=WORKER), POD),
}


@pytest.mark.parametrize("attack", list(ATTACKS), ids=list(ATTACKS))
def test_attack_is_denied(policies: list[Policy], attack: str) -> None:
    request, reason = ATTACKS[attack]
    attrs = admission_request(request)
    assert attrs is not None
    decisions = admit(policies, attrs)
    failures = [f for d in decisions if d.applies for f in d.failures]
    assert failures, f"{attack} was admitted: {decisions}"
    assert not [f for f in failures if f.startswith("error")], failures
    assert any(reason in " ".join(f.split()) for f in failures), failures


ALLOWED: dict[str, LoggedRequest] = {
    "a token naming the API server's audience": token("apps", NAME, audiences=[*API_AUDIENCES]),
    "a token with an empty audience list": token("apps", NAME, audiences=[]),
    "a token for exactly 24 hours": token("apps", NAME, 86400),
    "a scan service account as scanfleet creates it": sa(
        lbl={**labels(), "scanfleet.io/run-id": "r"}
    ),
    "the scan identity execs into its pod": req(
        "GET", "pods", "apps", "web", sub="exec", user=f"system:serviceaccount:apps:{NAME}"
    ),
    "a pod running as the worker": pod(
        "scanfleet", user="system:serviceaccount:kube-system:replicaset-controller"
    ),
    "a pod running as default": pod("default"),
    "an admin binds cluster-admin": binding(
        {"apiGroup": RBAC, "kind": "ClusterRole", "name": "cluster-admin"}
    )._replace(identity="alice"),
    "an admin deletes payments-api": delete(
        "serviceaccounts", "payments", "payments-api", SCANFLEET_LABEL
    )._replace(identity="alice"),
    "a scan role with verbs in the other order": req(
        "POST",
        "roles",
        "apps",
        group=RBAC,
        body={
            "metadata": {"name": NAME, "labels": labels()},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["pods/exec"],
                    "verbs": ["get", "create"],
                    "resourceNames": ["web"],
                },
                {
                    "apiGroups": [""],
                    "resources": ["pods"],
                    "verbs": ["get"],
                    "resourceNames": ["web"],
                },
            ],
        },
    ),
    "a scan role owned by its service account": req(
        "POST",
        "roles",
        "apps",
        group=RBAC,
        body={
            "metadata": {
                "name": NAME,
                "labels": labels(),
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ServiceAccount", "name": NAME, "uid": "u"}
                ],
            },
            "rules": rules(),
        },
    ),
}


@pytest.mark.parametrize("case", list(ALLOWED), ids=list(ALLOWED))
def test_legitimate_neighbours_are_admitted(policies: list[Policy], case: str) -> None:
    attrs = admission_request(ALLOWED[case])
    assert attrs is not None
    assert [d for d in admit(policies, attrs) if not d.allowed] == []


def test_a_cel_error_fails_closed(policies: list[Policy]) -> None:
    """A Role without rules would make the rules check error: failurePolicy Fail denies."""
    broken = req(
        "POST", "roles", "apps", group=RBAC, body={"metadata": {"name": NAME, "labels": labels()}}
    )
    attrs = admission_request(broken)
    assert attrs is not None
    (worker,) = [d for d in admit(policies, attrs) if d.applies]
    assert not worker.allowed
    assert any(f.startswith("error") for f in worker.failures)
