"""The API requests a scan makes with its own token: reading its pod, nothing else.

The admin identity never reads the target pod during a scan. The scan's token reads it,
which the Role allows for exactly that pod: the one request is at once the access check
(the authorizer may refuse a new RoleBinding for a moment: 401/403 are retried with
`clock.RBAC_PROPAGATION` until a deadline), the pod's existence (404: target_not_found),
its phase, its regular containers and its UID.

The connection carries the token and nothing else: no client certificate, so the request is
authenticated as the scan identity even when the admin context uses certificates. The
token travels in each request's header, never in the connection, so scans of one cluster
share a connection pool per process (`_pool`): one TLS handshake per connection, not per
scan. It must never log or raise the token.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import urllib3

from scanfleet.core.clock import RBAC_PROPAGATION, backoff
from scanfleet.core.errors import (
    ClusterApiError,
    ClusterForbidden,
    ClusterUnavailable,
    TargetNotFound,
)
from scanfleet.core.targets import PodInfo, pod_info
from scanfleet.kube.kubeconfig import ClusterEndpoint

REQUEST_TIMEOUT = urllib3.Timeout(connect=10.0, read=60.0)
_POOL_SIZE = 32  # connections kept per cluster: more than a worker's concurrent scans
_pools: dict[tuple[int, ClusterEndpoint], urllib3.PoolManager] = {}
_pools_lock = threading.Lock()


def _pool(endpoint: ClusterEndpoint) -> urllib3.PoolManager:
    """The process's pool for scan requests to this endpoint (a forked child makes its own)."""
    key = (os.getpid(), endpoint)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            ca = endpoint.ca_data.decode() if endpoint.ca_data and not endpoint.insecure else None
            pool = _pools[key] = urllib3.PoolManager(
                num_pools=4,
                maxsize=_POOL_SIZE,
                block=False,
                cert_reqs="CERT_NONE" if endpoint.insecure else "CERT_REQUIRED",
                ca_cert_data=ca,
                server_hostname=endpoint.tls_server_name,
                timeout=REQUEST_TIMEOUT,
            )
        return pool


class ScanClient:
    """A connection pool authenticated as one scan identity (its bearer token)."""

    def __init__(
        self, endpoint: ClusterEndpoint, token: str, context: str, retries: urllib3.Retry | int = 5
    ) -> None:
        self.context = context
        self._server = endpoint.server.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self._retries = retries
        self._pool = _pool(endpoint)

    def close(self) -> None:
        """Forget the token; the shared pool's connections stay for the next scan."""
        self._headers = {}

    def read_pod(self, namespace: str, name: str, *, wait: float = 0.0) -> PodInfo:
        """GET the pod as the scan identity, retrying 401/403 for up to `wait` seconds.

        TargetNotFound on 404; ClusterForbidden when still refused at the deadline.
        """
        url = f"{self._server}/api/v1/namespaces/{namespace}/pods/{name}"
        deadline = time.monotonic() + wait
        attempt = 0
        while True:
            status, body = self._get(url, f"pod {namespace}/{name}")
            if status == 200:
                return pod_info(body)
            if status == 404:
                raise TargetNotFound(
                    f"pod {namespace}/{name} not found in context {self.context!r}"
                )
            delay = backoff(RBAC_PROPAGATION, attempt, rand=lambda: 0.0)
            if status not in (401, 403) or time.monotonic() + delay > deadline:
                error = ClusterForbidden if status in (401, 403) else ClusterApiError
                raise error(
                    f"context {self.context!r}: the scan identity could not read pod "
                    f"{namespace}/{name} (HTTP {status})"
                    + (
                        f" within {wait:g} s; RBAC may not have propagated, or an admission "
                        "webhook changed its Role"
                        if status in (401, 403) and wait
                        else ""
                    )
                )
            time.sleep(delay)
            attempt += 1

    def _get(self, url: str, what: str) -> tuple[int, Any]:
        try:
            resp = self._pool.request("GET", url, headers=self._headers, retries=self._retries)
        except urllib3.exceptions.HTTPError as e:
            raise ClusterUnavailable(
                f"context {self.context!r}: reading {what} as the scan identity: cannot reach "
                f"the API server ({type(e).__name__})"
            ) from None
        if resp.status != 200:
            return resp.status, None
        try:
            return 200, json.loads(resp.data)
        except ValueError:
            raise ClusterApiError(
                f"context {self.context!r}: reading {what}: the API server sent no JSON"
            ) from None
