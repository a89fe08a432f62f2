"""Test without a cluster: a simulated Kubernetes API server and a stand-in auditor.

    from scanfleet.testing.fakekube import FakeCluster
    with FakeCluster() as cluster:
        cluster.add_namespace("apps")
        cluster.add_pod("apps", "web", containers=["app"])
        cluster.write_kubeconfig(tmp_path / "config")

`fakekube` speaks real HTTP(S) with real status codes and `kind: Status` bodies, issues
tokens (TokenRequest), evaluates RBAC for them, serves exec over WebSocket, and collects
garbage by ownerReferences, so the official client and real kubectl both work against it.
`standin/cinc-auditor` honours the auditor's command-line contract (arguments, the JSON
reporter file, exit codes) and authenticates with the kubeconfig it is given.

The top of the import graph: production code never imports this package.
"""
