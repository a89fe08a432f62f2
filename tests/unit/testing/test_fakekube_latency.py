"""The fake API server's latency knob (bench/bench_sweep.py's distant clusters)."""

from __future__ import annotations

import time
from pathlib import Path

from scanfleet.kube.client import ClientCache, KubeClient
from scanfleet.testing.fakekube import FakeCluster


def timed_read(kube: KubeClient) -> float:
    t0 = time.monotonic()
    kube.read_object("ServiceAccount", "apps", "absent")
    return time.monotonic() - t0


def test_every_response_waits_the_latency_set_and_none_after_reset(
    fake_cluster: FakeCluster, admin_kubeconfig: Path
) -> None:
    kube = ClientCache(str(admin_kubeconfig), retries=0).get("fake")
    timed_read(kube)  # the connection is open: what follows is the server's time
    fake_cluster.set_latency(0.3)
    assert timed_read(kube) >= 0.3
    fake_cluster.set_latency(0)
    assert timed_read(kube) < 0.3
