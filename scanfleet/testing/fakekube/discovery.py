"""Discovery documents (legacy, non-aggregated: kubectl falls back to these by itself)."""

from __future__ import annotations

from typing import Any

from .store import KINDS, RBAC

AUTHZ = "authorization.k8s.io"

VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-fakekube",
    "gitCommit": "0" * 40,
    "gitTreeState": "clean",
    "buildDate": "2024-12-11T00:00:00Z",
    "goVersion": "go1.23.4",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def _resource(
    name: str,
    kind: str,
    namespaced: bool,
    verbs: list[str],
    short: list[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name,
        "singularName": "" if "/" in name else kind.lower(),
        "namespaced": namespaced,
        "kind": kind,
        "verbs": verbs,
    }
    if short:
        out["shortNames"] = short
    out.update(extra)
    return out


def _resources(group: str) -> list[dict[str, Any]]:
    return [
        _resource(k.resource, k.kind, k.namespaced, sorted(k.verbs), list(k.short_names) or None)
        for k in KINDS.values()
        if k.group == group
    ]


def core_v1() -> dict[str, Any]:
    res = _resources("")
    res += [
        _resource("pods/exec", "PodExecOptions", True, ["create", "get"]),
        _resource(
            "serviceaccounts/token",
            "TokenRequest",
            True,
            ["create"],
            group="authentication.k8s.io",
            version="v1",
        ),
    ]
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "v1",
        "resources": sorted(res, key=lambda r: r["name"]),
    }


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def _group(name: str) -> dict[str, Any]:
    gv = {"groupVersion": f"{name}/v1", "version": "v1"}
    return {"name": name, "versions": [gv], "preferredVersion": gv}


def api_group_list() -> dict[str, Any]:
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [_group(RBAC), _group(AUTHZ)]}


def api_group(name: str) -> dict[str, Any] | None:
    if name not in (RBAC, AUTHZ):
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(name)}


def group_resources(name: str) -> dict[str, Any] | None:
    if name == RBAC:
        res = _resources(RBAC)
    elif name == AUTHZ:
        res = [_resource("selfsubjectaccessreviews", "SelfSubjectAccessReview", False, ["create"])]
    else:
        return None
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{name}/v1",
        "resources": res,
    }
