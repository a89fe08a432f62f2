"""RBAC evaluation as kube-apiserver does it: rule matching, 403 messages, escalation checks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Rule = Mapping[str, Any]


@dataclass(frozen=True)
class Identity:
    """An authenticated caller."""

    username: str
    groups: tuple[str, ...] = ()
    superuser: bool = False
    sa_namespace: str | None = None
    sa_name: str | None = None

    @classmethod
    def service_account(cls, namespace: str, name: str) -> Identity:
        return cls(
            username=f"system:serviceaccount:{namespace}:{name}",
            groups=(
                "system:serviceaccounts",
                f"system:serviceaccounts:{namespace}",
                "system:authenticated",
            ),
            sa_namespace=namespace,
            sa_name=name,
        )


@dataclass(frozen=True)
class Attributes:
    """What a request wants to do (the authorizer's view of it)."""

    verb: str
    resource: str
    group: str = ""
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None

    @property
    def full_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def _has(values: Iterable[str] | None, wanted: str) -> bool:
    values = list(values or [])
    return "*" in values or wanted in values


def _resource_matches(rule_resources: Sequence[str], attrs: Attributes) -> bool:
    for res in rule_resources:
        if res == "*" or res == attrs.full_resource:
            return True
        if attrs.subresource and res == f"*/{attrs.subresource}":
            return True
    return False


def rule_allows(rule: Rule, attrs: Attributes) -> bool:
    """Does one PolicyRule allow this request? (resourceNames never match nameless requests)"""
    if rule.get("nonResourceURLs"):
        return False
    if not _has(rule.get("verbs"), attrs.verb):
        return False
    if not _has(rule.get("apiGroups"), attrs.group):
        return False
    if not _resource_matches(rule.get("resources") or [], attrs):
        return False
    names = rule.get("resourceNames") or []
    if names:
        return bool(attrs.name) and attrs.name in names
    return True


def rules_allow(rules: Iterable[Rule], attrs: Attributes) -> bool:
    return any(rule_allows(r, attrs) for r in rules)


def forbidden_message(identity: Identity, attrs: Attributes) -> str:
    """The message kube-apiserver puts in a 403 Status for this request."""
    group_resource = attrs.resource + (f".{attrs.group}" if attrs.group else "")
    subject = f'{group_resource} "{attrs.name}"' if attrs.name else group_resource
    where = f'in the namespace "{attrs.namespace}"' if attrs.namespace else "at the cluster scope"
    return (
        f'{subject} is forbidden: User "{identity.username}" cannot {attrs.verb} resource '
        f'"{attrs.full_resource}" in API group "{attrs.group}" {where}'
    )


def _atoms(rule: Rule) -> Iterable[tuple[str, str, str, str | None]]:
    names = list(rule.get("resourceNames") or []) or [None]
    for group in rule.get("apiGroups") or [""]:
        for resource in rule.get("resources") or []:
            for verb in rule.get("verbs") or []:
                for name in names:
                    yield group, resource, verb, name


def _covers_atom(owner: Rule, atom: tuple[str, str, str, str | None]) -> bool:
    group, resource, verb, name = atom
    if owner.get("nonResourceURLs"):
        return False
    if not _has(owner.get("verbs"), verb) or not _has(owner.get("apiGroups"), group):
        return False
    owner_res = list(owner.get("resources") or [])
    if not ("*" in owner_res or resource in owner_res):
        sub = resource.split("/", 1)[1] if "/" in resource else None
        if not (sub and f"*/{sub}" in owner_res):
            return False
    owner_names = owner.get("resourceNames") or []
    if owner_names:
        return name is not None and name in owner_names
    return True


def uncovered_rules(owner_rules: Sequence[Rule], wanted: Sequence[Rule]) -> list[Rule]:
    """The parts of ``wanted`` that ``owner_rules`` do not cover (empty: no escalation)."""
    missing: list[Rule] = []
    for rule in wanted:
        if rule.get("nonResourceURLs"):
            continue
        for atom in _atoms(rule):
            if not any(_covers_atom(o, atom) for o in owner_rules):
                group, resource, verb, name = atom
                m: dict[str, Any] = {"apiGroups": [group], "resources": [resource], "verbs": [verb]}
                if name:
                    m["resourceNames"] = [name]
                missing.append(m)
    return missing


def format_rules(rules: Sequence[Rule]) -> str:
    parts = []
    for r in rules:
        fields = [
            "APIGroups:[" + " ".join(f'"{g}"' for g in r.get("apiGroups", [])) + "]",
            "Resources:[" + " ".join(f'"{x}"' for x in r.get("resources", [])) + "]",
        ]
        if r.get("resourceNames"):
            fields.append("ResourceNames:[" + " ".join(f'"{n}"' for n in r["resourceNames"]) + "]")
        fields.append("Verbs:[" + " ".join(f'"{v}"' for v in r.get("verbs", [])) + "]")
        parts.append("{" + ", ".join(fields) + "}")
    return "\n".join(parts)
