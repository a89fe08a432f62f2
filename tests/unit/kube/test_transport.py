"""KubeClient's requests by resource path: the kubeconfig's credential, translated errors.

KubeClient issues plain JSON requests over the client library's pool instead of its
generated API classes, so these pin what the library used to do for it: an exec-plugin
credential is refreshed (`Configuration.refresh_api_key_hook`) before a request; a refusal
keeps the API server's `kind: Status` message and never the admin token; a server error
that outlasts the retries is ClusterUnavailable; paths and label selectors are encoded.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from scanfleet.core.errors import ClusterApiError, ClusterForbidden, ClusterUnavailable
from scanfleet.kube import transport
from scanfleet.kube.client import KubeClient
from scanfleet.kube.scan_client import ScanClient
from scanfleet.kube.transport import parse_time
from scanfleet.testing.fakekube import FakeCluster

PLUGIN = """#!{python}
import json, pathlib
calls = pathlib.Path({calls!r})
n = len(calls.read_text()) if calls.exists() else 0
calls.write_text("x" * (n + 1))
token = "stale-token-that-the-server-refuses" if n == 0 else {token!r}
print(json.dumps({{"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": {{"token": token, "expirationTimestamp": "2000-01-01T00:00:00Z"}}}}))
"""


def _exec_kubeconfig(cluster: FakeCluster, admin_kubeconfig: Path, tmp_path: Path) -> Path:
    """The admin kubeconfig with its token replaced by an exec plugin whose first credential
    is stale and already expired; every later call prints the admin token."""
    plugin = tmp_path / "plugin"
    plugin.write_text(
        PLUGIN.format(
            python=sys.executable, calls=str(tmp_path / "calls"), token=cluster.admin_token
        )
    )
    plugin.chmod(0o755)
    doc = yaml.safe_load(admin_kubeconfig.read_text())
    doc["users"][0]["user"] = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": str(plugin),
            "interactiveMode": "Never",
        }
    }
    path = tmp_path / "exec-kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_an_expired_exec_credential_is_refreshed_before_the_request(
    fake_cluster: FakeCluster,
    admin_kubeconfig: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = tmp_path / "calls"
    kube = KubeClient(str(_exec_kubeconfig(fake_cluster, admin_kubeconfig, tmp_path)), "fake")
    try:
        monkeypatch.setattr(transport, "AUTH_REFRESH_SECONDS", 3600.0)
        assert list(kube.list_pods("apps"))  # the stale token would be refused (401)
        assert len(calls.read_text()) == 2, "loading, then the refresh before the request"
        kube.read_pod("apps", "web")
        list(kube.list_pods("apps"))
        assert len(calls.read_text()) == 2, "the refreshed header is reused within the period"
        monkeypatch.setattr(transport, "AUTH_REFRESH_SECONDS", 0.0)
        kube.read_pod("apps", "web")
        assert len(calls.read_text()) == 3, "after the period the hook runs again"
    finally:
        kube.close()


def test_a_refusal_keeps_the_status_message_and_never_the_token(
    fake_cluster: FakeCluster, admin_kubeconfig: Path
) -> None:
    fake_cluster.fail(
        "GET",
        r"/namespaces/apps/pods/web$",
        403,
        message='pods "web" is forbidden: a policy said no',
    )
    kube = KubeClient(str(admin_kubeconfig), "fake")
    try:
        with pytest.raises(ClusterForbidden) as err:
            kube.read_pod("apps", "web")
    finally:
        kube.close()
    text = str(err.value)
    assert text == (
        "context 'fake': reading pod apps/web: HTTP 403 pods \"web\" is forbidden: a policy said no"
    )
    assert fake_cluster.admin_token not in text


def test_a_server_error_that_outlasts_the_retries_is_unavailable(
    fake_cluster: FakeCluster, admin_kubeconfig: Path
) -> None:
    fake_cluster.fail("GET", r"/api/v1/pods$", 503, times=10)
    kube = KubeClient(str(admin_kubeconfig), "fake", retries=1, backoff=0)
    try:
        with pytest.raises(ClusterUnavailable, match="HTTP 503"):
            list(kube.list_pods(None))
        fake_cluster.fail("POST", r"/serviceaccounts$", 422, message="bad body")
        with pytest.raises(ClusterApiError, match="HTTP 422 bad body"):
            kube.create_object("ServiceAccount", "apps", {"metadata": {"name": "x"}})
    finally:
        kube.close()


def test_label_selectors_and_pages_reach_the_server(
    fake_cluster: FakeCluster, admin_kubeconfig: Path
) -> None:
    for i in range(5):
        fake_cluster.add_pod("other", f"p{i}", labels={"app": "a b" if i % 2 else "c"})
    kube = KubeClient(str(admin_kubeconfig), "fake")
    try:
        pods = list(kube.list_pods("other", selector="app=c", page_size=2))
        everywhere = list(kube.list_pods(None, page_size=2))
    finally:
        kube.close()
    assert sorted(p.name for p in pods) == ["p0", "p2", "p4"]
    assert {"web", "pending", "p1", "p3"} <= {p.name for p in everywhere}


def test_api_timestamps_parse_as_aware_utc() -> None:
    t = parse_time("2026-01-02T03:04:05Z")
    assert t == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert t.utcoffset() is not None
    assert parse_time("2026-01-02T04:04:05+01:00") == t
    assert parse_time("not a time") is None
    assert parse_time(None) is None


def test_scan_clients_share_connections_but_never_a_credential(
    fake_cluster: FakeCluster, admin_kubeconfig: Path
) -> None:
    """One pool per cluster and process: a connection a valid token used carries nothing
    over to the next client's request, which is authenticated by its own token alone."""
    kube = KubeClient(str(admin_kubeconfig), "fake")
    endpoint = kube.endpoint()
    kube.close()
    valid = ScanClient(endpoint, fake_cluster.admin_token, "fake")
    bogus = ScanClient(endpoint, "not-a-token-the-server-knows", "fake")
    try:
        assert valid.read_pod("apps", "web").name == "web"
        with pytest.raises(ClusterForbidden, match="HTTP 401"):
            bogus.read_pod("apps", "web")
        assert valid.read_pod("apps", "web").name == "web"
        assert valid._pool is bogus._pool  # one TLS handshake per connection, not per scan
    finally:
        valid.close()
        bogus.close()
