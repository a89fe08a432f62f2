"""JSON requests to the Kubernetes API by resource path, for the admin adapter (`kube`).

The client library's `ApiClient` builds the TLS connection pool (CA, client certificate,
proxy, the cluster's urllib3 `Retry`) and its `Configuration` supplies the credential,
refreshed per request (`auth_settings()` runs `refresh_api_key_hook`: exec plugins,
expiring tokens). This module only puts paths, JSON bodies and that header on the wire,
without the generated API classes and models; it translates nothing into domain errors
(that is `kube`'s job) and must never log, raise or keep anything that carries a token.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote, urlencode

import urllib3

REQUEST_TIMEOUT = urllib3.Timeout(connect=10.0, read=60.0)  # each API request
AUTH_REFRESH_SECONDS = 1.0
"""How long one answer of `auth_settings()` is reused. Its refresh hook re-applies the whole
kubeconfig (the `host` setter re-scans os.environ for proxies: ~0.5 ms a call); a token is
renewed 5 minutes before it expires, so asking once a second is still ahead of it."""
_RBAC = "/apis/rbac.authorization.k8s.io/v1"
# kind -> (API group path, resource): where each scan object kind lives.
RESOURCES = {
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Role": (_RBAC, "roles"),
    "RoleBinding": (_RBAC, "rolebindings"),
}


class HttpError(Exception):
    """A non-2xx answer of the API server (`status`, `reason`, raw `body`)."""

    def __init__(self, status: int, reason: str | None, body: bytes | None) -> None:
        super().__init__(status)
        self.status = status
        self.reason = reason
        self.body = body


class NotJson(Exception):
    pass


class Credentials(Protocol):
    """What this module needs of the client library's `Configuration`."""

    host: str

    def auth_settings(self) -> dict[str, dict[str, Any]]: ...


class Transport:
    """JSON requests by resource path over the client library's connection pool (TLS,
    client certificate, proxy, `Retry`), authenticated by its `Configuration`."""

    def __init__(
        self, cfg: Credentials, pool: urllib3.PoolManager, headers: Mapping[str, str]
    ) -> None:
        self._cfg = cfg
        # Read once: the library's `host` getter re-scans os.environ for proxies every time.
        self._host = cfg.host
        self._pool = pool
        self._headers = {**headers, "Accept": "application/json"}
        self._auth: tuple[float, dict[str, str]] | None = None

    def close(self) -> None:
        self._pool.clear()

    def request(
        self, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None
    ) -> Any:
        """The parsed JSON answer; HttpError on a non-2xx status, urllib3's errors as is."""
        headers = {**self._headers, **self._auth_headers()}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        url = self._host + path + (f"?{urlencode(query)}" if query else "")
        resp = self._pool.request(
            method, url, body=data, headers=headers, timeout=REQUEST_TIMEOUT, preload_content=True
        )
        if not 200 <= resp.status <= 299:
            raise HttpError(resp.status, resp.reason, resp.data)
        try:
            return json.loads(resp.data)
        except ValueError:
            raise NotJson from None

    def probe(self, timeout: float) -> int:
        """One unauthenticated GET /version, no retries, within `timeout` seconds per step:
        the HTTP status (any answer means the server is reachable); urllib3's connection
        and TLS errors as they are."""
        resp = self._pool.request(
            "GET",
            self._host + "/version",
            headers=dict(self._headers),
            timeout=urllib3.Timeout(connect=timeout, read=timeout),
            retries=False,
            preload_content=True,
        )
        return int(resp.status)

    def _auth_headers(self) -> dict[str, str]:
        """The credential's headers; auth_settings() runs refresh_api_key_hook first (exec
        plugins, expiring tokens), at most once per AUTH_REFRESH_SECONDS."""
        now = time.monotonic()
        cached = self._auth
        if cached is None or now - cached[0] >= AUTH_REFRESH_SECONDS:
            headers = {}
            for auth in self._cfg.auth_settings().values():
                if auth.get("in") == "header" and auth.get("value"):
                    headers[auth["key"]] = auth["value"]
            cached = self._auth = (now, headers)
        return cached[1]


def ns_path(group: str, namespace: str, resource: str, *rest: str) -> str:
    """`{group}/namespaces/{namespace}/{resource}/...`, each name percent-encoded."""
    names = "".join(f"/{quote(part, safe='')}" for part in rest)
    return f"{group}/namespaces/{quote(namespace, safe='')}/{resource}{names}"


def object_path(kind: str, namespace: str, *rest: str) -> str:
    group, resource = RESOURCES[kind]
    return ns_path(group, namespace, resource, *rest)


def parse_time(value: object) -> datetime | None:
    """An API timestamp (RFC 3339) as an aware UTC datetime; None when absent or invalid."""
    if not isinstance(value, str) or not value:
        return None
    try:
        t = datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).astimezone(UTC)


def status_message(e: HttpError) -> str:
    """The `message` of a `kind: Status` body, else the HTTP reason; never the raw body."""
    try:
        body = json.loads(e.body) if e.body else {}
    except (TypeError, ValueError):
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    text = str(message or e.reason or "")
    return text[:500]
