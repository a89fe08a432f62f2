"""Kubeconfig files: the admin contexts scanfleet may use, and the scan's minimal document.

- `list_contexts` / `choose_contexts`: which admin contexts a command addresses
  (`--context`, `--all-contexts`, or the current one), BadInput naming the bad value.
- `ClusterEndpoint`, `kubeconfig_document`, `write_kubeconfig`: the throwaway kubeconfig a
  scan's auditor gets: self-contained (inline CA, inline token, no paths, no client
  certificate, no exec plugin), written 0600.

Must never log or raise anything that carries a token, a client key or kubeconfig content.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import config as k8s_config
from kubernetes.config.config_exception import ConfigException

from scanfleet.core.errors import BadInput


def list_contexts(kubeconfig: str) -> tuple[list[str], str | None]:
    """All context names of a kubeconfig and its current context."""
    try:
        contexts, current = k8s_config.list_kube_config_contexts(config_file=kubeconfig)
    except (ConfigException, OSError) as e:
        raise BadInput(f"cannot read kubeconfig {kubeconfig!r}: {first_line(e)}") from None
    names = [c["name"] for c in contexts or []]
    return names, (current or {}).get("name")


def choose_contexts(
    kubeconfig: str, contexts: tuple[str, ...] | list[str], all_contexts: bool
) -> list[str]:
    """Resolve `--context` (repeatable) / `--all-contexts` / the current context."""
    names, current = list_contexts(kubeconfig)
    if all_contexts:
        if not names:
            raise BadInput(f"kubeconfig {kubeconfig!r} has no contexts")
        return names
    if contexts:
        for name in contexts:
            if name not in names:
                raise BadInput(
                    f"context {name!r} not found in kubeconfig {kubeconfig!r} "
                    f"(known: {', '.join(names) or 'none'})"
                )
        return list(dict.fromkeys(contexts))
    if not current:
        raise BadInput(f"kubeconfig {kubeconfig!r} has no current context; pass --context")
    return [current]


@dataclass(frozen=True)
class ClusterEndpoint:
    """What a minimal kubeconfig needs to reach the cluster: no credentials in here."""

    server: str
    ca_data: bytes | None = field(repr=False)
    """PEM bytes of the CA, inline; None when the server is plain HTTP or TLS is unverified."""
    insecure: bool = False
    tls_server_name: str | None = None


def kubeconfig_document(endpoint: ClusterEndpoint, namespace: str, token: str) -> dict[str, Any]:
    cluster: dict[str, Any] = {"server": endpoint.server}
    if endpoint.insecure:
        cluster["insecure-skip-tls-verify"] = True
    elif endpoint.ca_data:
        cluster["certificate-authority-data"] = b64(endpoint.ca_data)
    if endpoint.tls_server_name:
        cluster["tls-server-name"] = endpoint.tls_server_name
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "target", "cluster": cluster}],
        "users": [{"name": "scanfleet", "user": {"token": token}}],
        "contexts": [
            {
                "name": "scan",
                "context": {"cluster": "target", "user": "scanfleet", "namespace": namespace},
            }
        ],
        "current-context": "scan",
        "preferences": {},
    }


def write_kubeconfig(
    directory: Path, endpoint: ClusterEndpoint, namespace: str, token: str
) -> Path:
    path = directory / "kubeconfig"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        # libyaml's emitter when PyYAML has it: the pure-Python one costs ~5 ms per scan.
        yaml.dump(
            kubeconfig_document(endpoint, namespace, token),
            f,
            Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper),
        )
    return path


def first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:300]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
