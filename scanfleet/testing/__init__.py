"""Test without a cluster: a simulated Kubernetes API server and a stand-in auditor.

The public testing module (as `celery.contrib.testing` and `kopf.testing` are): test your
thresholds, sweeps and CI gates against a simulated cluster with the real `scanfleet`
commands. `scanfleet demo` and scanfleet's own tests use the same module.

    import os, subprocess
    from scanfleet.testing import report, simulated_cluster, standin_auditor

    with simulated_cluster({"apps": ["web", "api"]}) as sim, standin_auditor(
        plan={"apps/web": {"report": str(report("red_hat_good.json"))}}
    ) as auditor:
        proc = subprocess.run(
            ["scanfleet", "submit", "--kubeconfig", str(sim.kubeconfig), "--all-namespaces",
             "--profile", "my-profile", "--threshold", "my-threshold.yml", "--local"],
            env={**os.environ, **sim.env, **auditor.env},
        )
        assert proc.returncode == 1  # my gate fails a target that misses the threshold

- `simulated_cluster(pods)` (`cluster.py`): a started `fakekube.FakeCluster` (real HTTPS,
  RBAC, TokenRequest, exec over WebSocket, garbage collection) seeded with
  namespace -> pod names, and an admin kubeconfig for it; stopped after the block.
- `standin_auditor(...)` (`auditor.py`): the stand-in `cinc-auditor` (`standin/`: the
  auditor's command-line contract, authenticating with the kubeconfig it is given) behind a
  launcher, and the environment a scanfleet process needs to run it in the auditor sandbox.
  Its plan (`standin/README.md`) picks each target's report, exit code, delay or failure.
- `report(name)`, `REPORTS`: real public STIG/CIS reports bundled in `samples/reports`
  (SOURCES.md there), which the stand-in answers with.
- `fakekube.FakeCluster` for finer control: faults, RBAC knobs, token lifetimes, requests.

The top of the import graph: production code never imports this package, except the
`scanfleet demo` command (one edge, declared in pyproject's import contract).
"""

from scanfleet.testing.auditor import (
    REPORTS,
    SAMPLES,
    STANDIN,
    StandinAuditor,
    report,
    standin_auditor,
)
from scanfleet.testing.cluster import SimulatedCluster, simulated_cluster

__all__ = [
    "REPORTS",
    "SAMPLES",
    "STANDIN",
    "SimulatedCluster",
    "StandinAuditor",
    "report",
    "simulated_cluster",
    "standin_auditor",
]
