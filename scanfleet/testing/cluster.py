"""A simulated cluster with a kubeconfig for it, as a context manager.

    from scanfleet.testing import simulated_cluster
    with simulated_cluster({"apps": ["web", "api"]}) as sim:
        subprocess.run(["scanfleet", "submit", "--kubeconfig", str(sim.kubeconfig), ...])

The API server is `fakekube.FakeCluster`: real HTTPS on 127.0.0.1, RBAC, TokenRequest, exec
over WebSocket and garbage collection, so scanfleet, the official client and kubectl all
work against it. It runs in this process (threads) and stops when the block ends.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from scanfleet.testing.fakekube import FakeCluster

Pods = Mapping[str, Sequence[str]]
"""Namespace -> pod names; each pod gets one Running container, `app`."""


@dataclass(frozen=True)
class SimulatedCluster:
    cluster: FakeCluster
    """The running API server: seed more with add_namespace/add_pod, inspect with
    scanfleet_objects(), issued_tokens, exec_attempts, requests ..."""
    kubeconfig: Path
    """An admin kubeconfig (mode 0600 in a 0700 directory) with one context."""
    context: str

    @property
    def env(self) -> dict[str, str]:
        """KUBECONFIG for scanfleet processes (so nothing reads ~/.kube/config)."""
        return {"KUBECONFIG": str(self.kubeconfig)}


def seed(cluster: FakeCluster, pods: Pods) -> None:
    for namespace, names in pods.items():
        cluster.add_namespace(namespace)
        for name in names:
            cluster.add_pod(
                namespace,
                name,
                containers=[("app", f"registry.example/{namespace}/{name}:1.0")],
                labels={"app": name},
            )


@contextmanager
def simulated_cluster(
    pods: Pods | None = None,
    *,
    directory: Path | None = None,
    context: str = "simulated",
    name: str = "simulated",
) -> Iterator[SimulatedCluster]:
    """Start a FakeCluster seeded with `pods`, write its kubeconfig, stop it afterwards.

    The kubeconfig goes to `directory/config` (a private temp directory, removed afterwards,
    when None). It holds an admin credential of the simulated cluster only.
    """
    with tempfile.TemporaryDirectory(prefix="scanfleet-sim-") as tmp:
        where = directory if directory is not None else Path(tmp)
        where.mkdir(mode=0o700, parents=True, exist_ok=True)
        where.chmod(0o700)
        with FakeCluster(name=name) as cluster:
            seed(cluster, pods or {})
            kubeconfig = cluster.write_kubeconfig(where / "config", context=context)
            kubeconfig.chmod(0o600)
            yield SimulatedCluster(cluster, kubeconfig, context)
