"""A fake Kubernetes API server for scanfleet's tests (real HTTP/HTTPS on 127.0.0.1).

    from scanfleet.testing.fakekube import FakeCluster, write_kubeconfig
    with FakeCluster() as cluster:
        cluster.add_namespace("apps")
        cluster.add_pod("apps", "web", containers=["app"])
        cluster.write_kubeconfig(tmp_path / "config")

See ``FakeCluster`` for seeding, inspection (objects, requests, request_log, issued_tokens,
exec_attempts, collected),
fault injection (fail, drop_connections), RBAC knobs (set_admin_rules), token lifetimes
(set_token_lifetime) and garbage collection (pause_gc, collect_garbage).
"""

from .cluster import FakeCluster
from .kubeconfig import AUTH_MODES, write_kubeconfig
from .rbac import Identity
from .state import ExecAttempt, LoggedRequest, RecordedRequest

__all__ = [
    "AUTH_MODES",
    "ExecAttempt",
    "FakeCluster",
    "Identity",
    "LoggedRequest",
    "RecordedRequest",
    "write_kubeconfig",
]
