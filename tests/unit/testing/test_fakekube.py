"""The fake Kubernetes API server, driven by the official client and by real kubectl."""

from __future__ import annotations

import base64
import http.client
import json
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import stream

from scanfleet.testing.fakekube import FakeCluster, write_kubeconfig
from tests.support.fixtures_kube import seed_default
from tests.support.kubeapi import (
    SCANFLEET,
    api_client,
    kubectl,
    mint_scoped_token,
    sa_body,
    status_body,
)

pytestmark = pytest.mark.leaves_leftovers(
    "tests of the fake itself mint scanfleet-labelled identities by hand"
)

# What deploy/ grants scanfleet (SPEC §9).
SCANFLEET_CLUSTERROLE = [
    {"apiGroups": [""], "resources": ["namespaces", "pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["get", "create"]},
    {
        "apiGroups": [""],
        "resources": ["serviceaccounts"],
        "verbs": ["create", "delete", "get", "list"],
    },
    {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]},
    {
        "apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["roles", "rolebindings"],
        "verbs": ["create", "delete", "get", "list"],
    },
]


@pytest.fixture
def rbac_api(admin_kubeconfig: Path) -> Iterator[client.RbacAuthorizationV1Api]:
    with api_client(admin_kubeconfig) as api:
        yield client.RbacAuthorizationV1Api(api)


@pytest.fixture
def scoped(fake_cluster: FakeCluster, admin_kubeconfig: Path, tmp_path: Path) -> Path:
    """A kubeconfig holding a token that may only get pod apps/web and exec into it."""
    with api_client(admin_kubeconfig) as api:
        token = mint_scoped_token(api, "apps", "web")
    return fake_cluster.write_kubeconfig(
        tmp_path / "scoped" / "config", token=token, namespace="apps"
    )


# --- CRUD through the official client ------------------------------------------------------------
def test_fixture_seed_is_visible(core: client.CoreV1Api) -> None:
    pods = core.list_namespaced_pod("apps").items
    assert {p.metadata.name for p in pods} == {"web", "pending"}
    web = core.read_namespaced_pod("web", "apps")
    assert [c.name for c in web.spec.containers] == ["app", "sidecar"]
    assert [c.name for c in web.spec.init_containers] == ["init-db"]
    assert web.status.phase == "Running"
    assert web.status.container_statuses[0].image_id.startswith("registry.example/web@sha256:")
    assert {n.metadata.name for n in core.list_namespace().items} == {"apps", "other"}


def test_serviceaccount_create_get_delete(
    core: client.CoreV1Api, fake_cluster: FakeCluster
) -> None:
    created = core.create_namespaced_service_account(
        "apps",
        {
            "metadata": {
                "name": "sa-1",
                "labels": {"a": "b"},
                "annotations": {"scanfleet.io/target": "apps/web/app"},
            },
            "automountServiceAccountToken": False,
        },
    )
    assert created.metadata.uid
    assert created.metadata.resource_version
    assert created.metadata.creation_timestamp is not None
    got = core.read_namespaced_service_account("sa-1", "apps")
    assert got.metadata.labels == {"a": "b"}
    assert got.metadata.annotations == {"scanfleet.io/target": "apps/web/app"}
    assert got.automount_service_account_token is False
    assert [o["metadata"]["name"] for o in fake_cluster.objects("serviceaccounts", "apps")] == [
        "sa-1"
    ]
    core.delete_namespaced_service_account("sa-1", "apps")
    with pytest.raises(ApiException) as err:
        core.read_namespaced_service_account("sa-1", "apps")
    body = status_body(err.value)
    assert (err.value.status, body["reason"]) == (404, "NotFound")
    assert body["message"] == 'serviceaccounts "sa-1" not found'
    assert body["details"] == {"name": "sa-1", "kind": "serviceaccounts"}


def test_create_conflict_invalid_and_missing_namespace(core: client.CoreV1Api) -> None:
    core.create_namespaced_service_account("apps", sa_body("dup"))
    with pytest.raises(ApiException) as err:
        core.create_namespaced_service_account("apps", sa_body("dup"))
    body = status_body(err.value)
    assert (err.value.status, body["reason"]) == (409, "AlreadyExists")
    assert body["details"]["name"] == "dup"

    with pytest.raises(ApiException) as err:
        core.create_namespaced_service_account("apps", sa_body("Bad_Name"))
    body = status_body(err.value)
    assert (err.value.status, body["reason"]) == (422, "Invalid")
    assert body["details"]["kind"] == "ServiceAccount"
    assert body["details"]["causes"][0]["field"] == "metadata.name"

    with pytest.raises(ApiException) as err:
        core.create_namespaced_service_account("nope", sa_body("x"))
    assert (err.value.status, status_body(err.value)["message"]) == (
        404,
        'namespaces "nope" not found',
    )


def test_delete_missing_is_404_and_rbac_delete_returns_success(
    rbac_api: client.RbacAuthorizationV1Api,
) -> None:
    with pytest.raises(ApiException) as err:
        rbac_api.delete_namespaced_role("ghost", "apps")
    body = status_body(err.value)
    assert body["message"] == 'roles.rbac.authorization.k8s.io "ghost" not found'
    assert body["details"]["group"] == "rbac.authorization.k8s.io"
    rbac_api.create_namespaced_role(
        "apps",
        {
            "metadata": {"name": "r"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
        },
    )
    result = rbac_api.delete_namespaced_role("r", "apps")
    result = result if isinstance(result, dict) else result.to_dict()
    assert result["status"] == "Success"


def test_role_validation_rejects_rule_without_verbs(
    rbac_api: client.RbacAuthorizationV1Api,
) -> None:
    with pytest.raises(ApiException) as err:
        rbac_api.create_namespaced_role(
            "apps",
            {
                "metadata": {"name": "r"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": []}],
            },
        )
    assert status_body(err.value)["reason"] == "Invalid"


def test_cluster_wide_lists_with_label_selector(admin_kubeconfig: Path) -> None:
    with api_client(admin_kubeconfig) as api:
        mint_scoped_token(api, "apps", "web", name="scan-a")
        mint_scoped_token(api, "other", "x", name="scan-b")
        core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
        core.create_namespaced_service_account("apps", sa_body("unmanaged"))
        sel = "app.kubernetes.io/managed-by=scanfleet"
        sas = core.list_service_account_for_all_namespaces(label_selector=sel).items
        assert sorted((s.metadata.namespace, s.metadata.name) for s in sas) == [
            ("apps", "scan-a"),
            ("other", "scan-b"),
        ]
        roles = rbac.list_role_for_all_namespaces(label_selector=sel).items
        assert len(roles) == 2
        rbs = rbac.list_namespaced_role_binding("other", label_selector=sel).items
        assert [r.metadata.name for r in rbs] == ["scan-b"]


def test_replace_and_patch(core: client.CoreV1Api) -> None:
    sa = core.create_namespaced_service_account("apps", sa_body("edit-me"))
    sa.metadata.labels = {"v": "2"}
    replaced = core.replace_namespaced_service_account("edit-me", "apps", sa)
    assert replaced.metadata.labels == {"v": "2"}
    assert replaced.metadata.uid == sa.metadata.uid
    assert replaced.metadata.resource_version != sa.metadata.resource_version
    with pytest.raises(ApiException) as err:  # stale resourceVersion
        core.replace_namespaced_service_account("edit-me", "apps", sa)
    assert err.value.status == 409
    patched = core.patch_namespaced_service_account(
        "edit-me", "apps", {"metadata": {"labels": {"w": "3"}}}
    )
    assert patched.metadata.labels == {"v": "2", "w": "3"}


# --- selectors and pagination ---------------------------------------------------------------
@pytest.fixture
def labelled(fake_cluster: FakeCluster) -> FakeCluster:
    fake_cluster.add_namespace("sel")
    for name, labels in [
        ("a", {"app": "web", "env": "prod"}),
        ("b", {"app": "web"}),
        ("c", {"app": "db", "env": "dev"}),
        ("d", {}),
    ]:
        fake_cluster.add_pod("sel", name, labels=labels)
    return fake_cluster


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("app=web", "ab"),
        ("app==web", "ab"),
        ("app!=web", "cd"),
        ("app in (web, db)", "abc"),
        ("app notin (web)", "cd"),
        ("env", "ac"),
        ("!env", "bd"),
        ("app=web,env", "a"),
        ("app=web,!env", "b"),
        ("env in (prod,dev),app!=db", "a"),
        ("", "abcd"),
    ],
)
def test_label_selector_grammar(
    labelled: FakeCluster, core: client.CoreV1Api, selector: str, expected: str
) -> None:
    pods = core.list_namespaced_pod("sel", label_selector=selector).items
    assert "".join(p.metadata.name for p in pods) == expected


@pytest.mark.parametrize("selector", ["app=(", "app in web", "a b", "app,", "=web"])
def test_bad_label_selector_is_400(
    labelled: FakeCluster, core: client.CoreV1Api, selector: str
) -> None:
    with pytest.raises(ApiException) as err:
        core.list_namespaced_pod("sel", label_selector=selector)
    assert (err.value.status, status_body(err.value)["reason"]) == (400, "BadRequest")


def test_field_selector_phase(core: client.CoreV1Api) -> None:
    running = core.list_pod_for_all_namespaces(field_selector="status.phase=Running").items
    assert [p.metadata.name for p in running] == ["web"]
    other = core.list_namespaced_pod("apps", field_selector="status.phase!=Running").items
    assert [p.metadata.name for p in other] == ["pending"]


def test_pagination_limit_and_continue(fake_cluster: FakeCluster, core: client.CoreV1Api) -> None:
    fake_cluster.add_namespace("many")
    for i in range(25):
        fake_cluster.add_pod("many", f"pod-{i:02d}")
    names: list[str] = []
    pages, token = 0, None
    while True:
        page = core.list_namespaced_pod("many", limit=10, _continue=token)
        pages += 1
        names += [p.metadata.name for p in page.items]
        assert len(page.items) == (10 if pages < 3 else 5)
        token = page.metadata._continue
        if not token:
            break
        assert page.metadata.remaining_item_count == 25 - 10 * pages
    assert pages == 3
    assert names == [f"pod-{i:02d}" for i in range(25)]
    with pytest.raises(ApiException) as err:
        core.list_namespaced_pod("many", limit=10, _continue="not-a-token")
    assert err.value.status == 400


def test_pagination_across_namespaces_with_selector(
    fake_cluster: FakeCluster, core: client.CoreV1Api
) -> None:
    for ns in ("n1", "n2"):
        fake_cluster.add_namespace(ns)
        for i in range(3):
            fake_cluster.add_pod(ns, f"p{i}", labels={"scan": "yes" if i != 1 else "no"})
    seen, token = [], None
    while True:
        page = core.list_pod_for_all_namespaces(limit=1, _continue=token, label_selector="scan=yes")
        seen += [f"{p.metadata.namespace}/{p.metadata.name}" for p in page.items]
        token = page.metadata._continue
        if not token:
            break
    assert seen == ["n1/p0", "n1/p2", "n2/p0", "n2/p2"]


# --- tokens and RBAC ----------------------------------------------------------------------------
def test_token_request_shape_and_minimum(core: client.CoreV1Api, fake_cluster: FakeCluster) -> None:
    core.create_namespaced_service_account("apps", sa_body("tok"))
    tr = core.create_namespaced_service_account_token(
        "tok", "apps", {"spec": {"expirationSeconds": 600}}
    )
    token = tr.status.token
    assert token.startswith("eyJ")
    assert token.count(".") == 2
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert payload["sub"] == "system:serviceaccount:apps:tok"
    assert tr.status.expiration_timestamp is not None
    assert token in fake_cluster.issued_tokens
    with pytest.raises(ApiException) as err:
        core.create_namespaced_service_account_token(
            "tok", "apps", {"spec": {"expirationSeconds": 599}}
        )
    assert (err.value.status, status_body(err.value)["reason"]) == (422, "Invalid")
    with pytest.raises(ApiException) as err:
        core.create_namespaced_service_account_token("ghost", "apps", {"spec": {}})
    assert err.value.status == 404


def test_scoped_token_python_client(fake_cluster: FakeCluster, scoped: Path) -> None:
    with api_client(scoped) as api:
        core = client.CoreV1Api(api)
        assert core.read_namespaced_pod("web", "apps").metadata.name == "web"
        with pytest.raises(ApiException) as err:
            core.read_namespaced_pod("pending", "apps")
        body = status_body(err.value)
        assert body["reason"] == "Forbidden"
        assert body["message"] == (
            'pods "pending" is forbidden: User "system:serviceaccount:apps:scan-1" cannot get '
            'resource "pods" in API group "" in the namespace "apps"'
        )
        with pytest.raises(ApiException) as err:  # resourceNames never match a list
            core.list_namespaced_pod("apps")
        assert err.value.status == 403
        assert "cannot list resource" in status_body(err.value)["message"]
    assert (
        "GET",
        "/api/v1/namespaces/apps/pods/web",
        "system:serviceaccount:apps:scan-1",
    ) in fake_cluster.requests


def test_scoped_token_kubectl_allowed_and_refused(fake_cluster: FakeCluster, scoped: Path) -> None:
    assert kubectl(scoped, "get", "pod", "web", "-o", "name", check=True).stdout.strip() == (
        "pod/web"
    )
    pod = json.loads(kubectl(scoped, "get", "pod", "web", "-o", "json", check=True).stdout)
    assert pod["status"]["phase"] == "Running"
    for args in (
        ["get", "secrets"],
        ["exec", "pending", "--", "true"],
        ["get", "pod", "web", "-n", "other"],
        ["get", "pods"],
    ):
        proc = kubectl(scoped, *args)
        assert proc.returncode != 0, args
        assert "Forbidden" in proc.stderr, (args, proc.stderr)
    assert 'cannot list resource "secrets"' in kubectl(scoped, "get", "secrets").stderr


def test_scoped_token_kubectl_exec_into_its_pod(fake_cluster: FakeCluster, scoped: Path) -> None:
    proc = kubectl(scoped, "exec", "web", "-c", "app", "--", "cat", "/etc/os-release")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "fake-exec:app:cat /etc/os-release\n"
    attempts = fake_cluster.exec_attempts
    assert attempts[-1].allowed
    assert attempts[-1].pod == "web"
    assert attempts[-1].identity == "system:serviceaccount:apps:scan-1"


def test_exec_refused_for_other_pod_before_upgrade(
    fake_cluster: FakeCluster,
    scoped: Path,
    rbac_api: client.RbacAuthorizationV1Api,
) -> None:
    # kubectl reads the pod before it execs, so let the token read web2 but not exec into it.
    fake_cluster.add_pod("apps", "web2", containers=["app"])
    rbac_api.create_namespaced_role(
        "apps",
        {
            "metadata": {"name": "peek"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["pods"],
                    "verbs": ["get"],
                    "resourceNames": ["web2"],
                }
            ],
        },
    )
    rbac_api.create_namespaced_role_binding(
        "apps",
        {
            "metadata": {"name": "peek"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "peek"},
            "subjects": [{"kind": "ServiceAccount", "name": "scan-1"}],
        },
    )
    proc = kubectl(scoped, "exec", "web2", "--", "true")
    assert proc.returncode != 0
    # kubectl <= 1.36 prints the Status ("Forbidden"), 1.37 its own "forbidden" wording.
    assert "forbidden" in proc.stderr.lower()
    assert 'cannot create resource "pods/exec"' in proc.stderr  # SPDY fallback after WS GET
    attempts = fake_cluster.exec_attempts
    assert {a.pod for a in attempts} == {"web2"}
    assert not any(a.allowed for a in attempts)
    assert any(
        r.method == "GET" and r.path.endswith("/pods/web2/exec") for r in fake_cluster.requests
    )  # kubectl 1.30+ tried the WebSocket GET first


def exec_stream(core: client.CoreV1Api, pod: str, container: str, command: list[str]) -> Any:
    # _preload_content=False so that the socket can be closed: the preloading path of the
    # kubernetes client never closes its WebSocket.
    return stream(
        core.connect_get_namespaced_pod_exec,
        pod,
        "apps",
        command=command,
        container=container,
        stderr=True,
        stdin=False,
        stdout=True,
        tty=False,
        _preload_content=False,
    )


def test_exec_python_client_websocket(fake_cluster: FakeCluster, scoped: Path) -> None:
    with api_client(scoped) as api:
        core = client.CoreV1Api(api)
        ws = exec_stream(core, "web", "sidecar", ["id", "-u"])
        try:
            ws.run_forever(timeout=10)
            assert ws.read_stdout() == "fake-exec:sidecar:id -u\n"
            assert ws.returncode == 0
        finally:
            ws.close()
            ws.sock.shutdown()  # websocket-client keeps the socket after a server-sent close
        with pytest.raises(ApiException) as err:
            exec_stream(core, "pending", "app", ["true"])
        assert "403" in str(err.value)


def test_exec_handler_exit_code(fake_cluster: FakeCluster, admin_kubeconfig: Path) -> None:
    fake_cluster.set_exec_handler(lambda ns, pod, ctr, cmd: (b"custom\n", 3))
    proc = kubectl(admin_kubeconfig, "exec", "-n", "apps", "web", "-c", "app", "--", "false")
    assert proc.stdout == "custom\n"
    assert proc.returncode == 3


def test_exec_without_upgrade_is_clear_non_403(fake_cluster: FakeCluster) -> None:
    status, body = raw_request(
        fake_cluster, "POST", "/api/v1/namespaces/apps/pods/web/exec?command=true&container=app"
    )
    assert status == 400
    assert "Upgrade request required" in body["message"]


def test_deleting_serviceaccount_revokes_token(
    fake_cluster: FakeCluster, scoped: Path, core: client.CoreV1Api
) -> None:
    with api_client(scoped) as api:
        client.CoreV1Api(api).read_namespaced_pod("web", "apps")
        core.delete_namespaced_service_account("scan-1", "apps")
        with pytest.raises(ApiException) as err:
            client.CoreV1Api(api).read_namespaced_pod("web", "apps")
        assert (err.value.status, status_body(err.value)["reason"]) == (401, "Unauthorized")


def test_recreated_serviceaccount_does_not_revive_old_token(
    fake_cluster: FakeCluster, scoped: Path, core: client.CoreV1Api
) -> None:
    core.delete_namespaced_service_account("scan-1", "apps")
    core.create_namespaced_service_account("apps", sa_body("scan-1"))
    with api_client(scoped) as api, pytest.raises(ApiException) as err:
        client.CoreV1Api(api).read_namespaced_pod("web", "apps")
    assert err.value.status == 401


def test_expired_and_unknown_tokens_are_401(
    fake_cluster: FakeCluster, scoped: Path, tmp_path: Path
) -> None:
    fake_cluster.expire_token(fake_cluster.issued_tokens[-1])
    proc = kubectl(scoped, "get", "pod", "web")
    assert proc.returncode != 0
    assert "Unauthorized" in proc.stderr or "must be logged in" in proc.stderr
    bogus = fake_cluster.write_kubeconfig(tmp_path / "bogus" / "config", token="eyJ.x.y")
    assert kubectl(bogus, "get", "ns").returncode != 0


def test_no_credentials_is_401(fake_cluster: FakeCluster) -> None:
    status, body = raw_request(fake_cluster, "GET", "/api/v1/namespaces", token=None)
    assert (status, body["reason"], body["code"]) == (401, "Unauthorized", 401)


def test_self_subject_access_review(scoped: Path) -> None:
    with api_client(scoped) as api:
        authz = client.AuthorizationV1Api(api)

        def can(verb: str, resource: str, name: str | None, sub: str | None = None) -> bool:
            review = authz.create_self_subject_access_review(
                {
                    "spec": {
                        "resourceAttributes": {
                            "namespace": "apps",
                            "verb": verb,
                            "resource": resource,
                            "name": name,
                            "subresource": sub,
                        }
                    }
                }
            )
            return bool(review.status.allowed)

        assert can("get", "pods", "web")
        assert can("create", "pods", "web", "exec")
        assert can("get", "pods", "web", "exec")
        assert not can("get", "pods", "pending")
        assert not can("list", "pods", None)
        assert not can("get", "secrets", "db-password")


def test_kubectl_auth_can_i_and_create_token(scoped: Path, admin_kubeconfig: Path) -> None:
    assert kubectl(scoped, "auth", "can-i", "get", "pods/web").stdout.strip() == "yes"
    proc = kubectl(scoped, "auth", "can-i", "get", "secrets")
    assert (proc.returncode, proc.stdout.strip()) == (1, "no")
    kubectl(admin_kubeconfig, "create", "sa", "-n", "apps", "k", check=True)
    token = kubectl(
        admin_kubeconfig, "create", "token", "-n", "apps", "k", "--duration=15m", check=True
    ).stdout.strip()
    assert token.startswith("eyJ")
    proc = kubectl(admin_kubeconfig, "create", "token", "-n", "apps", "k", "--duration=5m")
    assert proc.returncode != 0
    assert "10 minutes" in proc.stderr


# --- escalation ------------------------------------------------------------------------------
def test_restricted_admin_needs_pods_exec_to_mint_the_role(
    fake_cluster: FakeCluster, admin_kubeconfig: Path
) -> None:
    without_exec = [r for r in SCANFLEET_CLUSTERROLE if r["resources"] != ["pods/exec"]]
    fake_cluster.set_admin_rules(without_exec)
    with api_client(admin_kubeconfig) as api, pytest.raises(ApiException) as err:
        mint_scoped_token(api, "apps", "web", name="esc")
    body = status_body(err.value)
    assert body["reason"] == "Forbidden"
    assert "attempting to grant RBAC permissions not currently held" in body["message"]
    assert '"pods/exec"' in body["message"]


def test_restricted_admin_with_get_only_exec_is_refused(
    fake_cluster: FakeCluster, admin_kubeconfig: Path
) -> None:
    rules = [r for r in SCANFLEET_CLUSTERROLE if r["resources"] != ["pods/exec"]]
    rules.append({"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]})
    fake_cluster.set_admin_rules(rules)
    with api_client(admin_kubeconfig) as api, pytest.raises(ApiException) as err:
        mint_scoped_token(api, "apps", "web", name="esc")
    assert err.value.status == 403
    assert 'Verbs:["get"]' in status_body(err.value)["message"]


def test_scanfleet_clusterrole_is_sufficient_and_no_more(
    fake_cluster: FakeCluster, admin_kubeconfig: Path
) -> None:
    fake_cluster.set_admin_rules(SCANFLEET_CLUSTERROLE)
    with api_client(admin_kubeconfig) as api:
        token = mint_scoped_token(api, "apps", "web")
        assert token in fake_cluster.issued_tokens
        core = client.CoreV1Api(api)
        with pytest.raises(ApiException) as err:
            core.list_namespaced_secret("apps")
        assert err.value.status == 403
        assert (
            'User "fake-admin" cannot list resource "secrets"' in status_body(err.value)["message"]
        )
        with pytest.raises(ApiException) as err:  # not even in a Role it creates itself
            client.RbacAuthorizationV1Api(api).create_namespaced_role(
                "apps",
                {
                    "metadata": {"name": "greedy"},
                    "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}],
                },
            )
        assert err.value.status == 403


def test_rolebinding_to_role_beyond_own_rights_is_refused(
    fake_cluster: FakeCluster,
    admin_kubeconfig: Path,
    rbac_api: client.RbacAuthorizationV1Api,
) -> None:
    rbac_api.create_namespaced_role(
        "apps",
        {
            "metadata": {"name": "secrets-reader"},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}],
        },
    )
    fake_cluster.set_admin_rules(SCANFLEET_CLUSTERROLE)
    with pytest.raises(ApiException) as err:
        rbac_api.create_namespaced_role_binding(
            "apps",
            {
                "metadata": {"name": "rb"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "secrets-reader",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "x", "namespace": "apps"}],
            },
        )
    assert err.value.status == 403


# --- faults ----------------------------------------------------------------------------------
def test_injected_429_without_retry_after_reaches_the_client(
    fake_cluster: FakeCluster, core: client.CoreV1Api
) -> None:
    fake_cluster.fail("GET", r"/namespaces/apps/pods$", 429, times=1)
    with pytest.raises(ApiException) as err:
        core.list_namespaced_pod("apps")
    assert (err.value.status, status_body(err.value)["reason"]) == (429, "TooManyRequests")
    assert len(core.list_namespaced_pod("apps").items) == 2


def test_injected_429_with_retry_after(fake_cluster: FakeCluster, core: client.CoreV1Api) -> None:
    fake_cluster.fail("GET", r"/namespaces/apps/pods$", 429, times=1, retry_after=7)
    status, body, headers = raw_request(
        fake_cluster, "GET", "/api/v1/namespaces/apps/pods", with_headers=True
    )
    assert (status, headers["Retry-After"]) == (429, "7")
    assert body["details"]["retryAfterSeconds"] == 7
    # urllib3 (under the official client) retries a 429 that carries Retry-After by itself.
    fake_cluster.fail("GET", r"/namespaces/apps/pods$", 429, times=1, retry_after=1)
    assert len(core.list_namespaced_pod("apps").items) == 2
    hits = [r for r in fake_cluster.requests if r.path == "/api/v1/namespaces/apps/pods"]
    assert len(hits) == 3


@pytest.mark.parametrize(
    ("code", "reason"), [(500, "InternalError"), (503, "ServiceUnavailable"), (403, "Forbidden")]
)
def test_injected_status_codes(
    fake_cluster: FakeCluster, core: client.CoreV1Api, code: int, reason: str
) -> None:
    fake_cluster.fail("POST", r"/serviceaccounts$", code)
    with pytest.raises(ApiException) as err:
        core.create_namespaced_service_account("apps", sa_body("f"))
    assert (err.value.status, status_body(err.value)["reason"]) == (code, reason)
    core.create_namespaced_service_account("apps", sa_body("f"))
    assert [o["metadata"]["name"] for o in fake_cluster.objects("serviceaccounts")] == ["f"]


def test_dropped_connection(fake_cluster: FakeCluster) -> None:
    fake_cluster.drop_connections("GET", r"^/api/v1/namespaces$", times=1)
    with pytest.raises(http.client.RemoteDisconnected):
        raw_request(fake_cluster, "GET", "/api/v1/namespaces")
    status, _ = raw_request(fake_cluster, "GET", "/api/v1/namespaces")
    assert status == 200


def test_kubectl_sees_injected_429_and_retries(
    fake_cluster: FakeCluster, admin_kubeconfig: Path
) -> None:
    fake_cluster.fail("GET", r"/pods/web$", 429, times=1, retry_after=1)
    proc = kubectl(admin_kubeconfig, "get", "pod", "-n", "apps", "web", "-o", "name")
    assert proc.returncode == 0, proc.stderr
    hits = [r for r in fake_cluster.requests if r.path == "/api/v1/namespaces/apps/pods/web"]
    assert len(hits) == 2  # client-go honoured Retry-After and tried again


# --- admin auth modes, discovery and multiple clusters --------------------------------------------
AUTH_MODES = ["token", "client-cert", "ca-file", "insecure"]


@pytest.mark.parametrize("auth", AUTH_MODES)
def test_admin_auth_modes_kubectl(fake_cluster: FakeCluster, tmp_path: Path, auth: str) -> None:
    kc = fake_cluster.write_kubeconfig(tmp_path / "kc" / "config", auth=auth)
    proc = kubectl(kc, "get", "pod", "web", "-n", "apps", "-o", "name", check=True)
    assert proc.stdout.strip() == "pod/web"
    assert fake_cluster.requests[-1].identity == "fake-admin"


@pytest.mark.parametrize("auth", AUTH_MODES)
@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_admin_auth_modes_python_client(
    fake_cluster: FakeCluster, tmp_path: Path, auth: str
) -> None:
    kc = fake_cluster.write_kubeconfig(tmp_path / "kc" / "config", auth=auth)
    text = kc.read_text()
    assert ("certificate-authority:" in text) == (auth == "ca-file")
    assert ("client-certificate-data" in text) == (auth == "client-cert")
    assert ("insecure-skip-tls-verify: true" in text) == (auth == "insecure")
    with api_client(kc) as api:
        assert client.CoreV1Api(api).read_namespaced_pod("web", "apps").metadata.name == "web"
    assert fake_cluster.requests[-1].identity == "fake-admin"


def test_wrong_ca_is_rejected(
    fake_cluster: FakeCluster, make_cluster: Callable[..., FakeCluster], tmp_path: Path
) -> None:
    other = make_cluster()
    kc = fake_cluster.write_kubeconfig(tmp_path / "kc" / "config")
    kc.write_text(
        kc.read_text().replace(
            base64.b64encode(fake_cluster.ca_pem).decode(), base64.b64encode(other.ca_pem).decode()
        )
    )
    with api_client(kc) as api, pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        client.CoreV1Api(api).list_namespace(_request_timeout=5)


def test_plain_http_cluster(make_cluster: Callable[..., FakeCluster], tmp_path: Path) -> None:
    cluster = seed_default(make_cluster(tls=False))
    assert cluster.url.startswith("http://")
    with api_client(cluster.write_kubeconfig(tmp_path / "config")) as api:
        assert len(client.CoreV1Api(api).list_namespaced_pod("apps").items) == 2


def test_two_clusters_in_one_kubeconfig(
    make_cluster: Callable[..., FakeCluster], tmp_path: Path
) -> None:
    east, west = make_cluster(name="east"), make_cluster(name="west")
    for cluster, pod in ((east, "e1"), (west, "w1")):
        cluster.add_namespace("apps")
        cluster.add_pod("apps", pod)
    kc = write_kubeconfig(tmp_path / "config", {"east": east, "west": west}, current="west")
    contexts = kubectl(kc, "config", "get-contexts", "-o", "name", check=True).stdout.split()
    assert sorted(contexts) == ["east", "west"]
    assert (
        kubectl(kc, "get", "pods", "-n", "apps", "-o", "name", check=True).stdout.strip()
        == "pod/w1"
    )
    assert (
        kubectl(
            kc, "--context", "east", "get", "pods", "-n", "apps", "-o", "name", check=True
        ).stdout.strip()
        == "pod/e1"
    )
    for context, pod in (("east", "e1"), ("west", "w1")):
        with api_client(kc, context) as api:
            pods = client.CoreV1Api(api).list_namespaced_pod("apps").items
            assert [p.metadata.name for p in pods] == [pod]


def test_kubectl_discovery_and_table_output(
    fake_cluster: FakeCluster, admin_kubeconfig: Path
) -> None:
    resources = kubectl(admin_kubeconfig, "api-resources", "-o", "name", check=True).stdout
    for name in (
        "pods",
        "serviceaccounts",
        "roles.rbac.authorization.k8s.io",
        "selfsubjectaccessreviews.authorization.k8s.io",
    ):
        assert name in resources.split()
    table = kubectl(admin_kubeconfig, "get", "pods", "-A", check=True).stdout
    assert "web" in table
    assert "pending" in table
    assert kubectl(admin_kubeconfig, "version", "-o", "json", check=True).stdout
    assert fake_cluster.errors == []


def test_openapi_is_404_and_aggregated_discovery_falls_back(fake_cluster: FakeCluster) -> None:
    assert raw_request(fake_cluster, "GET", "/openapi/v2")[0] == 404
    accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
    status, body, headers = raw_request(
        fake_cluster, "GET", "/apis", accept=accept, with_headers=True
    )
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert body["kind"] == "APIGroupList"


def test_peak_and_scanfleet_objects(fake_cluster: FakeCluster, core: client.CoreV1Api) -> None:
    for i in range(3):
        core.create_namespaced_service_account("apps", sa_body(f"s{i}", SCANFLEET))
    core.delete_namespaced_service_account("s0", "apps")
    core.delete_namespaced_service_account("s1", "apps")
    core.create_namespaced_service_account("apps", sa_body("s3", SCANFLEET))
    core.create_namespaced_service_account("apps", sa_body("plain"))
    assert fake_cluster.peak_scanfleet_serviceaccounts == 3
    assert sorted(o["metadata"]["name"] for o in fake_cluster.scanfleet_objects()) == ["s2", "s3"]


def test_stop_closes_port(make_cluster: Callable[..., FakeCluster]) -> None:
    cluster = make_cluster()
    url = cluster.url
    cluster.stop()
    _host, port = url.rsplit(":", 1)
    conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=2)
    try:
        with pytest.raises(ConnectionRefusedError):
            conn.request("GET", "/version")
    finally:
        conn.close()


# --- raw HTTP --------------------------------------------------------------------------------
def raw_request(
    cluster: FakeCluster,
    method: str,
    path: str,
    token: str | None = "admin",
    accept: str = "application/json",
    with_headers: bool = False,
) -> Any:
    ctx = ssl.create_default_context(cadata=cluster.ca_pem.decode())
    conn = http.client.HTTPSConnection("127.0.0.1", cluster.port, context=ctx, timeout=10)
    headers = {"Accept": accept}
    if token:
        headers["Authorization"] = f"Bearer {cluster.admin_token if token == 'admin' else token}"
    try:
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        body = json.loads(resp.read() or b"null")
        if with_headers:
            return resp.status, body, dict(resp.headers)
        return resp.status, body
    finally:
        conn.close()


@pytest.fixture
def core(admin_kubeconfig: Path) -> Iterator[client.CoreV1Api]:
    with api_client(admin_kubeconfig) as api:
        yield client.CoreV1Api(api)
