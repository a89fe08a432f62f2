"""Deployment artefacts: the worker image, the Compose stack and the Kubernetes manifests.

None of these can run here (no Docker engine, no cluster), so each test checks what can be
checked without one: the Compose file against the Compose Specification schema, every
manifest against the official Kubernetes client models, the RBAC rules against the exact
allowed set, the Dockerfile's pins, and the entrypoint by running it with a stand-in
`scanfleet`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.config.kube_config import KubeConfigLoader

from tests.support.manifests import (
    DEPLOY,
    _by_kind,
    _clusterrole_rules,
    _deserialize,
    _dropped_keys,
    _manifests,
    _model_name,
    _one,
)
from tests.support.paths import ROOT

COMPOSE = ROOT / "compose" / "docker-compose.yml"
COMPOSE_SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
DOCKERFILE = ROOT / "workers" / "Dockerfile"
ENTRYPOINT = ROOT / "workers" / "entrypoint.sh"

SCANFLEET_SETTINGS = (
    "SCANFLEET_BROKER_URL",
    "SCANFLEET_RESULTS_DIR",
    "SCANFLEET_AUDITOR",
    "SCANFLEET_CLUSTER_CONCURRENCY",
    "SCANFLEET_TOKEN_TTL",
    "SCANFLEET_SCAN_TIMEOUT",
    "SCANFLEET_LOG_FORMAT",
    "SCANFLEET_RETENTION_DAYS",
    "SCANFLEET_KEY_PREFIX",
    "SCANFLEET_ALLOWED_PROFILES",
)

# (apiGroup, resource, verb): what scanfleet's own identity may do, and nothing else.
ALLOWED_RULES = frozenset(
    {("", "namespaces", v) for v in ("get", "list", "watch")}
    | {("", "pods", v) for v in ("get", "list", "watch")}
    | {("", "pods/exec", v) for v in ("get", "create")}
    | {("", "serviceaccounts", v) for v in ("create", "delete", "get", "list")}
    | {("", "serviceaccounts/token", "create")}
    | {
        ("rbac.authorization.k8s.io", r, v)
        for r in ("roles", "rolebindings")
        for v in ("create", "delete", "get", "list")
    }
)


# --------------------------------------------------------------------------------------------
# Compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    # PyYAML's safe loader resolves `<<` merge keys, as Compose does.
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose_validator() -> jsonschema.Draft7Validator:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_compose_file_validates_against_the_compose_specification(
    compose: dict[str, Any], compose_validator: jsonschema.Draft7Validator
) -> None:
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in compose_validator.iter_errors(compose)
    ]
    assert errors == []


def test_compose_schema_rejects_what_compose_would_reject(
    compose: dict[str, Any], compose_validator: jsonschema.Draft7Validator
) -> None:
    """The vendored schema is strict enough to catch a typo (so the test above means something)."""
    broken = json.loads(json.dumps(compose))
    broken["services"]["worker"]["container_nmae"] = "typo"
    assert not compose_validator.is_valid(broken)
    broken = json.loads(json.dumps(compose))
    broken["services"]["redis"]["depends_on"] = {"worker": {"condition": "when_ready"}}
    assert not compose_validator.is_valid(broken)


def test_compose_has_the_four_services_and_demo_services_only_in_the_demo_profile(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert {"redis", "worker", "beat", "flower"} <= set(services)
    for name in ("redis", "worker", "beat"):
        assert "profiles" not in services[name], f"{name} must start without a profile"
    # Flower (a web UI over the broker) only on request: `--profile monitor`.
    assert services["flower"]["profiles"] == ["monitor"]
    extra = set(services) - {"redis", "worker", "beat", "flower"}
    objectstore = {"minio", "minio-init", "worker-objectstore", "beat-objectstore"}
    assert extra == {"k3s", "demo-workload", "prometheus"} | objectstore
    for name in objectstore:
        assert services[name].get("profiles") == ["objectstore"], name
    for name in extra - {"prometheus"} - objectstore:
        assert services[name].get("profiles") == ["demo"], name
    assert services["prometheus"]["profiles"] == ["observability"]
    assert services["k3s"]["image"].startswith("rancher/k3s:")
    assert services["k3s"]["privileged"] is True


def test_redis_persists_append_only_and_has_a_health_check(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert re.fullmatch(r"redis:\$\{REDIS_VERSION:-7\}|redis:7(\.\d+)*", redis["image"])
    command = redis["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(v.split(":")[1] == "/data" for v in redis["volumes"])
    kind, probe = redis["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    assert "redis-cli ping" in probe


def test_redis_requires_a_password_and_is_not_published(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert "ports" not in redis
    # The password is in a config file from a secret, never in the compose file or argv.
    assert redis["command"][1] == "/run/secrets/redis_conf"
    assert redis["secrets"] == ["redis_conf"]
    assert compose["secrets"]["redis_conf"] == {"file": "./secrets/redis.conf"}
    for name in ("worker", "beat", "flower"):
        service = compose["services"][name]
        assert "broker_url" in service["secrets"], name
        env = service["environment"]
        assert env["SCANFLEET_BROKER_URL_FILE"] == "/run/secrets/broker_url", name
        assert env["SCANFLEET_BROKER_URL"] == "${SCANFLEET_BROKER_URL:-}", name
    assert not [
        a
        for s in compose["services"].values()
        for a in s.get("command", [])
        if "requirepass" in str(a)
    ]
    script = (ROOT / "compose" / "make-secrets.sh").read_text()
    for made in ("secrets/redis.conf", "secrets/broker-url", "secrets/flower.py"):
        assert made in script
    assert "chmod 0700 secrets" in script
    assert "compose/secrets/" in (ROOT / ".gitignore").read_text()


def test_scanfleet_services_wait_for_a_healthy_redis(compose: dict[str, Any]) -> None:
    for name in ("worker", "beat", "flower"):
        assert compose["services"][name]["depends_on"]["redis"] == {
            "condition": "service_healthy"
        }, name


def test_worker_is_scalable(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker["build"] == {"context": "..", "dockerfile": "workers/Dockerfile"}
    assert (ROOT / "workers" / "Dockerfile").is_file()
    assert worker["command"][0] == "worker"


def test_beat_runs_the_sweeps_file_and_flower_watches_the_same_broker(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    beat, flower, worker = services["beat"], services["flower"], services["worker"]
    assert beat["command"] == ["beat", "--sweeps", "/etc/scanfleet/sweeps.yml"]
    assert "scale" not in beat or beat["scale"] == 1
    assert any(v.endswith(":/etc/scanfleet/sweeps.yml:ro") for v in beat["volumes"])
    assert beat["image"] == worker["image"] == flower["image"]
    # Flower runs scanfleet's own app: the same broker settings (URL file) as the workers.
    assert flower["environment"] == worker["environment"]
    assert "--app=scanfleet.worker.app" in flower["command"]
    assert "flower" in flower["command"]
    # Basic auth from a secret config file.
    assert "--conf=/run/secrets/flower_conf" in flower["command"]
    assert "flower_conf" in flower["secrets"]
    assert "--port=5555" in flower["command"]
    assert any(str(p).endswith(":5555") for p in flower["ports"])
    assert all(str(p).startswith("127.0.0.1:") for p in flower["ports"])


def test_kubeconfig_is_mounted_read_only_where_it_is_needed(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    # A dedicated scanner kubeconfig, never the operator's personal one.
    mount = "${KUBECONFIG_HOST_PATH:-./secrets/scanner-kubeconfig}:/etc/scanfleet/kubeconfig:ro"
    assert mount in worker["volumes"]
    assert not [
        v for s in compose["services"].values() for v in s.get("volumes", []) if "~/.kube" in v
    ]
    assert not re.search(
        r"^KUBECONFIG_HOST_PATH=~",
        (ROOT / "compose" / ".env.example").read_text(),
        flags=re.MULTILINE,
    )
    assert "create token" in (ROOT / "compose" / "README.md").read_text()
    assert worker["environment"]["KUBECONFIG"] == (
        "${SCANFLEET_KUBECONFIG:-/etc/scanfleet/kubeconfig}"
    )
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            target = volume.split(":")[1]
            if target.startswith(("/etc/scanfleet/kube", "/etc/scanfleet/demo")):
                assert volume.endswith(":ro"), (name, volume)
    # Beat only queues sweep ticks: it holds no cluster credential.
    assert not [v for v in compose["services"]["beat"]["volumes"] if "kube" in v]
    assert not [v for v in compose["services"]["flower"].get("volumes", []) if "kube" in v]


def test_results_live_on_one_named_volume_mounted_by_the_workers(
    compose: dict[str, Any],
) -> None:
    worker = compose["services"]["worker"]
    results_dir = worker["environment"]["SCANFLEET_RESULTS_DIR"]
    assert f"scanfleet-results:{results_dir}" in worker["volumes"]
    assert "scanfleet-results" in compose["volumes"]
    # A named volume (not a bind mount, not per-container): every replica of `worker` shares it.
    assert not (compose["volumes"]["scanfleet-results"] or {}).get("external")


def test_every_setting_comes_from_the_environment_with_the_product_default(
    compose: dict[str, Any],
) -> None:
    defaults = {
        "SCANFLEET_ALLOWED_PROFILES": "/etc/scanfleet/profiles",
        "SCANFLEET_CLUSTER_CONCURRENCY": "10",
        "SCANFLEET_TOKEN_TTL": "3600",
        "SCANFLEET_SCAN_TIMEOUT": "1800",
        "SCANFLEET_LOG_FORMAT": "json",
        "SCANFLEET_AUDITOR": "cinc-auditor",
        "SCANFLEET_RETENTION_DAYS": "30",
        "SCANFLEET_KEY_PREFIX": "scanfleet",
    }
    for name in ("worker", "beat"):
        env = compose["services"][name]["environment"]
        for key in set(SCANFLEET_SETTINGS) - {"SCANFLEET_BROKER_URL"}:
            assert re.fullmatch(rf"\$\{{{key}:-[^}}]+\}}", env[key]), (name, key, env[key])
        for key, default in defaults.items():
            assert env[key] == f"${{{key}:-{default}}}", (name, key)


def test_every_variable_the_compose_file_reads_is_documented() -> None:
    text = COMPOSE.read_text()
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    assert set(SCANFLEET_SETTINGS) <= used
    example = (ROOT / "compose" / ".env.example").read_text()
    documented = set(re.findall(r"^([A-Z0-9_]+)=", example, flags=re.MULTILINE))
    assert used - documented == set()
    readme = (ROOT / "workers" / "README.md").read_text()
    assert [v for v in sorted(used) if v not in readme] == []


def test_sweeps_files_name_their_sweeps_with_the_spec_keys() -> None:
    allowed = {
        "name", "schedule", "contexts", "all_contexts", "namespaces", "all_namespaces",
        "exclude_namespaces", "selector", "profile", "inputs", "threshold",
        "fleet_threshold", "dedupe_images",
    }  # fmt: skip
    configmap = next(
        d
        for d in yaml.safe_load_all((DEPLOY / "configmap.yaml").read_text())
        if d["metadata"]["name"] == "scanfleet-sweeps"
    )
    files = {
        "compose/sweeps.yml": yaml.safe_load((ROOT / "compose" / "sweeps.yml").read_text()),
        "compose/demo/sweeps.yml": yaml.safe_load(
            (ROOT / "compose" / "demo" / "sweeps.yml").read_text()
        ),
        "deploy/configmap.yaml": yaml.safe_load(configmap["data"]["sweeps.yml"]),
    }
    for where, doc in files.items():
        assert doc["sweeps"], where
        for sweep in doc["sweeps"]:
            assert set(sweep) <= allowed, (where, set(sweep) - allowed)
            assert len(sweep["schedule"].split()) == 5, (where, sweep["name"])
            assert ("contexts" in sweep) != ("all_contexts" in sweep) or (
                "contexts" not in sweep and "all_contexts" not in sweep
            )


@pytest.mark.parametrize(
    "sweeps_file", ["compose/sweeps.yml", "compose/demo/sweeps.yml", "deploy/configmap.yaml"]
)
def test_sweeps_files_load_with_scanfleets_own_strict_loader(
    sweeps_file: str, compose: dict[str, Any], tmp_path: Path
) -> None:
    """As beat would load them, with /etc/scanfleet/profiles mapped to the mounted dir."""
    from scanfleet.sweeps.spec import load_sweeps

    if sweeps_file.endswith("configmap.yaml"):
        (configmap,) = [
            d
            for d in yaml.safe_load_all((ROOT / sweeps_file).read_text())
            if d["metadata"]["name"] == "scanfleet-sweeps"
        ]
        text = configmap["data"]["sweeps.yml"]
    else:
        text = (ROOT / sweeps_file).read_text()
        # beat mounts the same profiles dir as the workers, so threshold files resolve.
        assert (
            "${SCANFLEET_PROFILES_DIR:-./demo/profiles}:/etc/scanfleet/profiles:ro"
            in compose["services"]["beat"]["volumes"]
        )
    profiles = ROOT / "compose" / "demo" / "profiles"
    copy = tmp_path / "sweeps.yml"
    copy.write_text(text.replace("/etc/scanfleet/profiles", str(profiles)))
    loaded = load_sweeps(copy)
    assert loaded
    assert all(s.name for s in loaded)


def test_demo_files_hang_together(compose: dict[str, Any]) -> None:
    demo = ROOT / "compose" / "demo"
    workload = list(yaml.safe_load_all((demo / "workload.yaml").read_text()))
    kinds = [d["kind"] for d in workload]
    assert kinds.count("Namespace") == 1
    assert kinds.count("Pod") >= 2
    namespace = workload[kinds.index("Namespace")]["metadata"]["name"]
    for doc in workload:
        _deserialize(doc)
    sweep = yaml.safe_load((demo / "sweeps.yml").read_text())["sweeps"][0]
    assert sweep["namespaces"] == [namespace]
    assert sweep["contexts"] == ["scanfleet-demo"]
    assert "scanfleet-demo" in (demo / "setup.sh").read_text()
    # The profile and threshold paths resolve inside the profiles mount.
    profiles = demo / "profiles"
    for key in ("profile", "threshold"):
        rel = Path(sweep[key]).relative_to("/etc/scanfleet/profiles")
        assert (profiles / rel).exists(), sweep[key]
    assert (profiles / "demo" / "inspec.yml").is_file()
    env = dict(
        line.split("=", 1)
        for line in (demo / "demo.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert env["SCANFLEET_SWEEPS_FILE"] == "./demo/sweeps.yml"
    assert env["SCANFLEET_KUBECONFIG"].startswith("/etc/scanfleet/demo/")
    assert "demo-kubeconfig:/etc/scanfleet/demo:ro" in compose["services"]["worker"]["volumes"]


# --------------------------------------------------------------------------------------------
# Kubernetes manifests


@pytest.mark.parametrize(
    ("filename", "doc"),
    _manifests(),
    ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in _manifests()],
)
def test_manifest_loads_into_the_official_client_model_without_losing_fields(
    filename: str, doc: dict[str, Any]
) -> None:
    model = _deserialize(doc)
    assert type(model).__name__ == _model_name(doc)
    api = k8s.ApiClient()
    try:
        roundtrip = api.sanitize_for_serialization(model)
    finally:
        api.close()
    assert _dropped_keys(doc, roundtrip) == [], filename


def test_unknown_fields_are_caught() -> None:
    """The round trip really drops unknown fields (so the test above means something)."""
    doc = json.loads(json.dumps(_one("Deployment", "scanfleet-worker")))
    doc["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {"runAsUser": 0}
    api = k8s.ApiClient()
    try:
        roundtrip = api.sanitize_for_serialization(_deserialize(doc))
    finally:
        api.close()
    assert _dropped_keys(doc, roundtrip) == ["/spec/template/spec/containers[0]/securityContex"]


CLUSTER_SCOPED = frozenset(
    {
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    files = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert len(kustomization["resources"]) == len(files)
    # No namespace transformer: it would stamp the cluster-scoped admission policies too.
    assert "namespace" not in kustomization
    namespaced = [d for _, d in _manifests() if d["kind"] not in CLUSTER_SCOPED]
    assert {d["metadata"]["namespace"] for d in namespaced} == {"scanfleet"}
    for _, d in _manifests():
        if d["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in d["metadata"], d["metadata"]["name"]


def test_clusterrole_grants_exactly_the_allowed_rules() -> None:
    granted = _clusterrole_rules()
    assert granted == ALLOWED_RULES
    flat = {part for triple in granted for part in triple}
    assert "*" not in flat
    assert not {"secrets", "escalate", "bind", "impersonate"} & flat


def test_clusterrole_holds_everything_a_scan_role_grants() -> None:
    """Kubernetes refuses to let scanfleet create a Role granting what it does not hold."""
    from scanfleet.identity.mint import role_rules

    granted = _clusterrole_rules()
    for rule in role_rules("some-pod"):
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert (group, resource, verb) in granted


def test_clusterrolebinding_binds_the_scanfleet_service_account() -> None:
    binding = _one("ClusterRoleBinding", "scanfleet")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "scanfleet",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "scanfleet", "namespace": "scanfleet"}
    ]
    assert _one("ServiceAccount", "scanfleet")["automountServiceAccountToken"] is False


def _pod_specs() -> list[tuple[str, dict[str, Any]]]:
    return [
        (d["metadata"]["name"], d["spec"]["template"]["spec"])
        for d in _by_kind("Deployment") + _by_kind("StatefulSet")
    ]


@pytest.mark.parametrize(("name", "spec"), _pod_specs(), ids=[n for n, _ in _pod_specs()])
def test_workloads_run_non_root_read_only_without_privileges_and_bounded(
    name: str, spec: dict[str, Any]
) -> None:
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] > 0
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in spec["containers"]:
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, (name, container["name"])
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc.get("privileged", False) is False
        resources = container["resources"]
        assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}


def test_only_the_worker_mounts_an_api_token() -> None:
    for name, spec in _pod_specs():
        expected = name == "scanfleet-worker"
        assert spec.get("automountServiceAccountToken") is expected, name


def test_worker_and_beat_deployments() -> None:
    worker = _one("Deployment", "scanfleet-worker")
    beat = _one("Deployment", "scanfleet-beat")
    assert worker["spec"]["replicas"] >= 2
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    (wc,) = worker["spec"]["template"]["spec"]["containers"]
    (bc,) = beat["spec"]["template"]["spec"]["containers"]
    assert wc["args"][0] == "worker"
    assert bc["args"][:2] == ["beat", "--sweeps"]
    assert all(e.get("name") != "KUBECONFIG" for e in wc.get("env", []))
    # Writable scratch where a read-only root needs it: /tmp (memory) and HOME.
    volumes = {v["name"]: v for v in worker["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in wc["volumeMounts"]}
    assert volumes[mounts["/tmp"]]["emptyDir"]["medium"] == "Memory"
    assert "emptyDir" in volumes[mounts["/home/scanfleet"]]
    results = volumes[mounts["/var/lib/scanfleet/results"]]
    pvc = _one("PersistentVolumeClaim", results["persistentVolumeClaim"]["claimName"])
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    # Warm shutdown has time to let a scan run to its timeout.
    config = _one("ConfigMap", "scanfleet-config")["data"]
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > int(config["SCANFLEET_SCAN_TIMEOUT"])
    assert int(config["SCANFLEET_TOKEN_TTL"]) >= int(config["SCANFLEET_SCAN_TIMEOUT"]) + 120
    assert set(config) == set(SCANFLEET_SETTINGS) - {"SCANFLEET_BROKER_URL"}
    secret = _one("Secret", "scanfleet-broker")
    assert set(secret["stringData"]) == {"SCANFLEET_BROKER_URL"}


def test_redis_is_append_only_and_reachable_only_from_scanfleet_pods() -> None:
    redis = _one("StatefulSet", "scanfleet-redis")
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    service = _one("Service", "scanfleet-redis")
    secret = _one("Secret", "scanfleet-broker")
    url = urlsplit(secret["stringData"]["SCANFLEET_BROKER_URL"])
    assert (url.hostname or "").split(".")[0] == service["metadata"]["name"]
    # requirepass from the scanfleet-redis-auth Secret, the same password as the URL's.
    auth = _one("Secret", "scanfleet-redis-auth")["stringData"]["redis.conf"]
    assert auth.strip() == f"requirepass {url.password}"
    assert args[:2] == ["redis-server", "/etc/redis-auth/redis.conf"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/etc/redis-auth"]
    volumes = {v["name"]: v for v in redis["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mount["name"]]["secret"]["secretName"] == "scanfleet-redis-auth"

    policy = _one("NetworkPolicy", "scanfleet-redis")["spec"]
    assert policy["podSelector"]["matchLabels"] == service["spec"]["selector"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    assert "egress" not in policy
    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "scanfleet"}


def test_worker_egress_is_redis_dns_and_the_api_server_only() -> None:
    policy = _one("NetworkPolicy", "scanfleet-worker")["spec"]
    worker = _one("Deployment", "scanfleet-worker")
    labels = worker["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in policy
    redis_rule, dns_rule, api_rule = policy["egress"]
    assert redis_rule["to"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "scanfleet-redis"}}}
    ]
    assert redis_rule["ports"] == [{"protocol": "TCP", "port": 6379}]
    assert {p["port"] for p in dns_rule["ports"]} == {53}
    assert dns_rule["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    (api_peer,) = api_rule["to"]
    cidr = api_peer["ipBlock"]["cidr"]
    assert not cidr.startswith("0.0.0.0"), "egress to the API server only, not anywhere"
    assert {p["port"] for p in api_rule["ports"]} <= {443, 6443}

    beat = _one("NetworkPolicy", "scanfleet-beat")["spec"]
    assert [r["to"] for r in beat["egress"]] == [redis_rule["to"], dns_rule["to"]]


# --------------------------------------------------------------------------------------------
# The worker image


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for raw in joined.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        out.append((instruction.upper(), rest.strip()))
    return out


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile_instructions()
    last_from = max(i for i, (ins, _) in enumerate(instructions) if ins == "FROM")
    return instructions[last_from:]


def test_dockerfile_pins_the_auditor_the_plugin_and_kubectl() -> None:
    args = dict(
        rest.split("=", 1)
        for ins, rest in _dockerfile_instructions()
        if ins == "ARG" and "=" in rest
    )
    assert re.fullmatch(r"6\.\d+\.\d+", args["CINC_AUDITOR_VERSION"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["TRAIN_K8S_CONTAINER_VERSION"])
    assert re.fullmatch(r"v1\.(\d+)\.\d+", args["KUBECTL_VERSION"])
    assert int(args["KUBECTL_VERSION"].split(".")[1]) >= 30  # exec over WebSocket GET
    for arch in ("AMD64", "ARM64"):
        assert re.fullmatch(r"[0-9a-f]{64}", args[f"KUBECTL_SHA256_{arch}"])
    runs = " ".join(rest for ins, rest in _dockerfile_instructions() if ins == "RUN")
    assert "omnitruck.cinc.sh/install.sh" in runs
    assert '-P cinc-auditor -v "${CINC_AUDITOR_VERSION}"' in runs
    assert re.search(
        r"plugin install train-k8s-container-mitre\s+-v \"\$\{TRAIN_K8S_CONTAINER_VERSION\}\"",
        runs,
    )
    assert "sha256sum -c" in runs
    assert "dl.k8s.io/release/${KUBECTL_VERSION}/" in runs
    assert "CHEF_LICENSE" not in runs  # CINC Auditor needs no licence acceptance


def test_dockerfile_runs_as_a_fixed_non_root_user_and_smoke_tests_as_that_user() -> None:
    final = _final_stage()
    users = [rest for ins, rest in final if ins == "USER"]
    assert users, "the final stage must set USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit()
    assert int(uid) > 0
    last_user = max(i for i, (ins, _) in enumerate(final) if ins == "USER")
    smoke = " ".join(rest for ins, rest in final[last_user:] if ins == "RUN")
    for check in (
        "cinc-auditor version",
        "cinc-auditor plugin list | grep -F train-k8s-container",
        "kubectl version --client",
        "scanfleet --help",
    ):
        assert check in smoke, check
    env = " ".join(rest for ins, rest in final if ins == "ENV")
    assert "HOME=/home/scanfleet" in env
    assert "INSPEC_CONFIG_DIR=" in env
    entrypoint = [rest for ins, rest in final if ins == "ENTRYPOINT"]
    assert entrypoint
    assert "scanfleet-entrypoint" in entrypoint[-1]
    assert [rest for ins, rest in final if ins == "CMD"][-1] == '["worker"]'
    copies = " ".join(rest for ins, rest in final if ins == "COPY")
    assert "workers/entrypoint.sh" in copies
    assert (ROOT / "pyproject.toml").is_file()


# --------------------------------------------------------------------------------------------
# The entrypoint


def test_entrypoint_is_valid_bash_and_executable() -> None:
    bash = shutil.which("bash")
    assert bash is not None
    subprocess.run([bash, "-n", str(ENTRYPOINT)], check=True)
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR


@pytest.fixture
def stand_in_bin(tmp_path: Path) -> Path:
    """A PATH directory whose `scanfleet` reports what it was started with."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "scanfleet"
    stub.write_text('#!/usr/bin/env bash\necho "KUBECONFIG=${KUBECONFIG:-}"\necho "ARGS=$*"\n')
    stub.chmod(0o755)
    return bin_dir


def _run_entrypoint(
    tmp_path: Path, bin_dir: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    base = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "TMPDIR": str(tmp_path / "tmp"),
        "SCANFLEET_SA_DIR": str(tmp_path / "sa"),
    }
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return subprocess.run(
        [str(ENTRYPOINT), *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )


def _fake_service_account(tmp_path: Path) -> Path:
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("not-a-real-token")
    (sa / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    (sa / "namespace").write_text("scanfleet")
    return sa


def test_entrypoint_writes_an_in_cluster_kubeconfig_from_the_service_account(
    tmp_path: Path, stand_in_bin: Path
) -> None:
    sa = _fake_service_account(tmp_path)
    result = _run_entrypoint(tmp_path, stand_in_bin)
    lines = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert lines["ARGS"] == "worker"
    kubeconfig = Path(lines["KUBECONFIG"])
    assert kubeconfig.parent.parent == tmp_path / "tmp"
    assert stat.S_IMODE(kubeconfig.stat().st_mode) == 0o600
    assert stat.S_IMODE(kubeconfig.parent.stat().st_mode) == 0o700
    text = kubeconfig.read_text()
    assert "not-a-real-token" not in text  # a path to the token, never a copy
    assert "not-a-real-token" not in result.stdout + result.stderr

    cfg = yaml.safe_load(text)
    assert cfg["current-context"] == "in-cluster"
    (context,) = cfg["contexts"]
    assert context == {
        "name": "in-cluster",
        "context": {"cluster": "in-cluster", "user": "in-cluster", "namespace": "scanfleet"},
    }
    # The official client reads it as an in-cluster identity.
    configuration = k8s.Configuration()
    KubeConfigLoader(config_dict=cfg, config_base_path=str(tmp_path)).load_and_set(configuration)
    assert configuration.host == "https://kubernetes.default.svc"
    assert configuration.ssl_ca_cert == str(sa / "ca.crt")
    assert "Bearer not-a-real-token" in configuration.api_key.values()


def test_entrypoint_leaves_an_explicit_kubeconfig_alone_and_passes_commands_through(
    tmp_path: Path, stand_in_bin: Path
) -> None:
    _fake_service_account(tmp_path)
    result = _run_entrypoint(
        tmp_path, stand_in_bin, "beat", "--sweeps", "/etc/x.yml", KUBECONFIG="/mine"
    )
    assert result.stdout.splitlines() == ["KUBECONFIG=/mine", "ARGS=beat --sweeps /etc/x.yml"]
    assert not (tmp_path / "tmp" / "scanfleet-in-cluster").exists()

    # Outside a pod (no service account) and with no KUBECONFIG: nothing is written.
    result = _run_entrypoint(
        tmp_path, stand_in_bin, "janitor", "--dry-run", SCANFLEET_SA_DIR=str(tmp_path / "nowhere")
    )
    assert result.stdout.splitlines() == ["KUBECONFIG=", "ARGS=janitor --dry-run"]

    # Anything that is not a scanfleet command runs as given (Flower, a shell, the auditor).
    result = _run_entrypoint(tmp_path, stand_in_bin, "echo", "celery", "flower")
    assert result.stdout.strip() == "celery flower"


def _cli_commands() -> list[str]:
    """The commands `scanfleet --help` lists, from the real CLI."""
    proc = subprocess.run(
        [sys.executable, "-c", "from scanfleet.cli import main; main()", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    section = proc.stdout.split("Commands:", 1)[1]
    return [line.split()[0] for line in section.splitlines() if line.startswith("  ")]


def test_every_scanfleet_command_reaches_scanfleet_through_the_entrypoint(
    tmp_path: Path, stand_in_bin: Path
) -> None:
    commands = _cli_commands()
    assert {"diff", "prune", "sweeps", "submit", "worker"} <= set(commands)
    for command in commands:
        # A and B: `diff A B` must be scanfleet's drift, never GNU diff.
        result = _run_entrypoint(
            tmp_path, stand_in_bin, command, "A", "B", SCANFLEET_SA_DIR=str(tmp_path / "nowhere")
        )
        assert result.stdout.splitlines()[-1] == f"ARGS={command} A B", command
    result = _run_entrypoint(tmp_path, stand_in_bin, "sweeps", "validate", "x.yml")
    assert result.stdout.splitlines()[-1] == "ARGS=sweeps validate x.yml"


def test_the_entrypoint_runs_explicit_programs_and_sends_unknown_words_to_scanfleet(
    tmp_path: Path, stand_in_bin: Path
) -> None:
    result = _run_entrypoint(tmp_path, stand_in_bin, "/bin/echo", "by", "path")
    assert result.stdout.strip() == "by path"
    result = _run_entrypoint(tmp_path, stand_in_bin, "no-such-program-or-command")
    assert result.stdout.splitlines()[-1] == "ARGS=no-such-program-or-command"


def test_the_objectstore_profile_shares_no_results_volume_and_holds_no_key(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for name in ("worker-objectstore", "beat-objectstore"):
        service = services[name]
        env = service["environment"]
        assert env["SCANFLEET_RESULTS_DIR"] == (
            "${SCANFLEET_S3_RESULTS:-s3://scanfleet-results/results}"
        )
        assert env["SCANFLEET_S3_ENDPOINT"] == "http://minio:9000"
        # Every other setting as the disk workers have it.
        assert (
            env["SCANFLEET_KEY_PREFIX"] == services["worker"]["environment"]["SCANFLEET_KEY_PREFIX"]
        )
        # No volume at all is shared for results: only read-only inputs are mounted.
        assert not [v for v in service["volumes"] if "results" in v]
        assert all(v.endswith(":ro") for v in service["volumes"]), service["volumes"]
        # The keys come from a secret file, never from the compose environment.
        assert not [k for k in env if k.startswith("AWS_") and k != "AWS_REGION"]
        assert "s3_credentials" in service["secrets"]
        assert ". /run/secrets/s3_credentials" in service["entrypoint"][4]
        assert service["entrypoint"][:2] == ["/usr/bin/tini", "--"]
        assert service["depends_on"]["minio-init"] == {
            "condition": "service_completed_successfully"
        }
    assert services["worker-objectstore"]["command"] == services["worker"]["command"]
    assert services["beat-objectstore"]["command"] == services["beat"]["command"]
    minio = services["minio"]
    assert "ports" not in minio  # only the stack's containers reach it
    assert minio["environment"]["MINIO_ROOT_PASSWORD_FILE"] == "minio_root_password"
    assert set(minio["secrets"]) == {"minio_root_user", "minio_root_password"}
    for name in ("minio_root_user", "minio_root_password", "s3_credentials"):
        assert compose["secrets"][name]["file"].startswith("./secrets/")
    script = (ROOT / "compose" / "make-secrets.sh").read_text()
    assert "secrets/s3-credentials" in script
    assert "secrets/minio-root-password" in script
    init = services["minio-init"]["command"][0]
    assert "mc anonymous set none local/scanfleet-results" in init  # a private bucket
    policy = json.loads((ROOT / "compose" / "objectstore" / "scanfleet-policy.json").read_text())
    actions = sorted(a for st in policy["Statement"] for a in st["Action"])
    assert actions == ["s3:DeleteObject", "s3:GetObject", "s3:ListBucket", "s3:PutObject"]
