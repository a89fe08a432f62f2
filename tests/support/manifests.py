"""Deploy manifests: loading, deserializing with the client's models, the ClusterRole's rules;
shared by the deploy tests."""

from __future__ import annotations

from typing import Any

import yaml
from kubernetes import client as k8s

from tests.support.paths import ROOT

DEPLOY = ROOT / "deploy"


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


def _model_name(doc: dict[str, Any]) -> str:
    version = doc["apiVersion"].rsplit("/", 1)[-1]
    return f"{version.capitalize()}{doc['kind']}"


def _deserialize(doc: dict[str, Any]) -> Any:
    api = k8s.ApiClient()
    try:
        return api._ApiClient__deserialize(doc, _model_name(doc))
    finally:
        api.close()


def _dropped_keys(original: Any, roundtrip: Any, path: str = "") -> list[str]:
    """Keys present in the manifest but lost by the model: fields the API does not know."""
    dropped: list[str] = []
    if isinstance(original, dict):
        if not isinstance(roundtrip, dict):
            return [path or "/"]
        for key, value in original.items():
            if key not in roundtrip:
                dropped.append(f"{path}/{key}")
            else:
                dropped += _dropped_keys(value, roundtrip[key], f"{path}/{key}")
    elif isinstance(original, list) and isinstance(roundtrip, list):
        for i, (a, b) in enumerate(zip(original, roundtrip, strict=True)):
            dropped += _dropped_keys(a, b, f"{path}[{i}]")
    return dropped


def _by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in _manifests() if doc["kind"] == kind]


def _one(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in _by_kind(kind) if d["metadata"]["name"] == name]
    return doc


def _clusterrole_rules() -> set[tuple[str, str, str]]:
    docs = list(yaml.safe_load_all((DEPLOY / "clusterrole.yaml").read_text()))
    assert [d["kind"] for d in docs] == ["ClusterRole"]
    granted = set()
    for rule in docs[0]["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    granted.add((group, resource, verb))
    return granted
