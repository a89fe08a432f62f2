"""Writing kubeconfig files that point at one or more fake clusters."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from .cluster import FakeCluster

AUTH_MODES = ("token", "client-cert", "ca-file", "insecure")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write_kubeconfig(
    path: str | Path,
    clusters: Mapping[str, FakeCluster],
    current: str | None = None,
    auth: str = "token",
    namespace: str | None = None,
    token: str | None = None,
) -> Path:
    """Write a kubeconfig with one context per entry of ``clusters`` (context name -> cluster).

    ``auth``: ``token`` (inline CA data + admin bearer token), ``client-cert`` (inline CA +
    admin client certificate/key data), ``ca-file`` (CA as a file path next to the
    kubeconfig, like minikube, + token), ``insecure`` (``insecure-skip-tls-verify`` + token).
    ``token`` replaces the admin token (e.g. a ServiceAccount token). Returns the path.
    """
    if auth not in AUTH_MODES:
        raise ValueError(f"auth must be one of {AUTH_MODES}, not {auth!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [],
        "users": [],
        "contexts": [],
        "current-context": current or next(iter(clusters), ""),
    }
    for name, cluster in clusters.items():
        entry: dict[str, Any] = {"server": cluster.url}
        if cluster.tls:
            if auth == "insecure":
                entry["insecure-skip-tls-verify"] = True
            elif auth == "ca-file":
                ca = path.parent / f"{path.stem}-{name}-ca.crt"
                ca.write_bytes(cluster.ca_pem)
                entry["certificate-authority"] = str(ca)
            else:
                entry["certificate-authority-data"] = _b64(cluster.ca_pem)
        user: dict[str, Any]
        if auth == "client-cert" and cluster.tls and token is None:
            user = {
                "client-certificate-data": _b64(cluster.client_cert_pem),
                "client-key-data": _b64(cluster.client_key_pem),
            }
        else:
            user = {"token": token or cluster.admin_token}
        ctx: dict[str, Any] = {"cluster": f"{name}-cluster", "user": f"{name}-user"}
        if namespace:
            ctx["namespace"] = namespace
        doc["clusters"].append({"name": f"{name}-cluster", "cluster": entry})
        doc["users"].append({"name": f"{name}-user", "user": user})
        doc["contexts"].append({"name": name, "context": ctx})
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    path.chmod(0o600)
    return path
