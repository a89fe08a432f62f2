"""The Kubernetes adapter. `kubernetes` is imported only in the kube package: here (the
client, its configuration and connection pool) and in `kube.kubeconfig` (reading contexts).

One `KubeClient` per cluster (kubeconfig context), each with its own `Configuration` and
connection pool — never the client library's global default configuration. The client
library loads the kubeconfig (exec plugins, client certificates, token refresh through
`Configuration.refresh_api_key_hook`) and builds the TLS connection pool; the requests
themselves are plain JSON by resource path (`kube.transport.Transport`), not the generated
API classes, whose import alone builds hundreds of pydantic models (over a second of CPU
per process).
Retries of 429 (honouring Retry-After), 5xx and connection errors are urllib3's `Retry`,
configured on that cluster's pool. HTTP statuses and urllib3 errors are translated here
into the domain errors of `scanfleet.core.errors`; nothing above this module sees them.

It must never log or raise anything that carries a token, a client key or a kubeconfig.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import urllib3
from kubernetes import config as k8s_config
from kubernetes.client.api_client import ApiClient
from kubernetes.client.configuration import Configuration
from kubernetes.config.config_exception import ConfigException

from scanfleet.core import metrics
from scanfleet.core.errors import (
    BadInput,
    ClusterApiError,
    ClusterForbidden,
    ClusterUnavailable,
    ForeignObject,
    ObjectChanged,
    TargetNotFound,
)
from scanfleet.core.logs import remember
from scanfleet.core.targets import PodInfo, pod_info
from scanfleet.kube.kubeconfig import ClusterEndpoint, first_line
from scanfleet.kube.transport import (
    RESOURCES,
    HttpError,
    NotJson,
    Transport,
    ns_path,
    object_path,
    parse_time,
    status_message,
)

T = TypeVar("T")

_RECREATE_ATTEMPTS = 5
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
PROBE_TIMEOUT = 3.0
"""Seconds `KubeClient.probe` waits to connect, and again for an answer."""


class KubeClient:
    """The API calls scanfleet makes against one cluster, as the admin context."""

    def __init__(
        self, kubeconfig: str, context: str, *, retries: int = 5, backoff: float = 0.5
    ) -> None:
        self.context = context
        cfg = Configuration()
        try:
            k8s_config.load_kube_config(
                config_file=kubeconfig,
                context=context,
                client_configuration=cfg,
                persist_config=False,
            )
        except (ConfigException, OSError) as e:
            raise BadInput(
                f"cannot load context {context!r} from kubeconfig {kubeconfig!r}: {first_line(e)}"
            ) from None
        # The admin credential is redacted by value from every log line and scrubbed text.
        remember(*(str(v).split()[-1] for v in (cfg.api_key or {}).values() if v), cfg.password)
        cfg.retries = urllib3.Retry(
            total=retries,
            backoff_factor=backoff,
            backoff_max=30,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=None,  # creates are safe to retry: a 409 on replay is handled
            respect_retry_after_header=True,
            raise_on_status=False,
        )
        if not cfg.verify_ssl:
            # The operator chose an unverified context; scanfleet warns once per scan
            # (credentials.insecure_tls) instead of urllib3 warning on every request.
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        self._cfg = cfg
        self._api = ApiClient(configuration=cfg)
        self._http = Transport(cfg, self._api.rest_client.pool_manager, self._api.default_headers)

    def close(self) -> None:
        self._api.close()
        self._http.close()

    # -- endpoint ------------------------------------------------------------------------
    def endpoint(self) -> ClusterEndpoint:
        """Server and CA (inline) of the admin context, for the scan's minimal kubeconfig."""
        cfg = self._cfg
        ca: bytes | None = None
        if cfg.ssl_ca_cert:
            ca = Path(cfg.ssl_ca_cert).read_bytes()
        elif raw := getattr(cfg, "ca_cert_data", None):  # kubernetes < 30: always a file
            ca = raw.encode() if isinstance(raw, str) else raw
        return ClusterEndpoint(
            server=cfg.host,
            ca_data=ca,
            insecure=not cfg.verify_ssl,
            tls_server_name=getattr(cfg, "tls_server_name", None) or None,
        )

    # -- pods and namespaces -------------------------------------------------------------
    def read_pod(self, namespace: str, name: str) -> PodInfo:
        pod = self._call(
            "get",
            f"reading pod {namespace}/{name}",
            lambda: self._http.request("GET", ns_path("/api/v1", namespace, "pods", name)),
            not_found=lambda: TargetNotFound(
                f"pod {namespace}/{name} not found in context {self.context!r}"
            ),
        )
        return pod_info(pod)

    def namespace_exists(self, name: str) -> bool | None:
        """Whether namespace `name` exists; None when the admin may not read namespaces
        (then nobody can tell, and discovery simply finds what it may list)."""
        try:
            self._call(
                "get",
                f"reading namespace {name}",
                lambda: self._http.request("GET", f"/api/v1/namespaces/{quote(name, safe='')}"),
                not_found=_Gone,
            )
        except _Gone:
            return False
        except ClusterForbidden:
            return None
        return True

    def list_pods(
        self, namespace: str | None, selector: str | None = None, page_size: int = 500
    ) -> Iterator[PodInfo]:
        """Pods in a namespace (or all), paginated with limit/continue."""
        if namespace is None:
            what, path = "listing pods", "/api/v1/pods"
        else:
            what, path = f"listing pods in {namespace}", ns_path("/api/v1", namespace, "pods")
        for pod in self._paginate(what, path, selector=selector, page_size=page_size):
            yield pod_info(pod)

    # -- scan identity objects -----------------------------------------------------------
    def create_object(
        self,
        kind: str,
        namespace: str,
        body: dict[str, Any],
        replaceable: Callable[[dict[str, Any]], str | None] | None = None,
    ) -> dict[str, Any]:
        """Create a ServiceAccount, Role or RoleBinding of a scan; the created object.

        One left by an earlier attempt of the same scan (409) is deleted (UID precondition)
        and created again, never updated: the ClusterRole grants no `update`, and a new
        ServiceAccount invalidates the earlier attempt's tokens. `replaceable(existing)` says
        why the object in the way is not scanfleet's (None: it is): ForeignObject, and it
        is left alone."""
        name = body["metadata"]["name"]
        path = object_path(kind, namespace)
        what = f"creating {kind} {namespace}/{name}"
        for attempt in range(_RECREATE_ATTEMPTS):
            try:
                created = self._call(
                    "create",
                    what,
                    lambda: self._http.request("POST", path, body=body),
                    conflict=_Exists,
                )
                return self.as_dict(kind, created)
            except _Exists:
                existing = self.read_object(kind, namespace, name)
                if existing is not None:
                    why = replaceable(existing) if replaceable is not None else None
                    if why is not None:
                        raise ForeignObject(
                            f"context {self.context!r}: {what}: a {kind} of that name exists "
                            f"and is not scanfleet's ({why}); it was left alone"
                        ) from None
                    with contextlib.suppress(ObjectChanged):
                        self.delete(kind, namespace, name, uid=existing["uid"])
                # Deletion may finish asynchronously: back off a little before recreating.
                time.sleep(min(0.2 * 2**attempt, 2.0))
        raise ClusterApiError(
            f"context {self.context!r}: {what}: an object of that name kept reappearing"
        )

    def create_token(
        self, namespace: str, service_account: str, ttl: int
    ) -> tuple[str, datetime | None]:
        """A TokenRequest token (a secret) and the expiry the API server granted, which may
        differ from `ttl` (`--service-account-max-token-expiration`)."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": ttl},
        }
        what = f"requesting a token for ServiceAccount {namespace}/{service_account}"
        path = object_path("ServiceAccount", namespace, service_account, "token")
        resp = self._call("create", what, lambda: self._http.request("POST", path, body=body))
        status = resp.get("status") or {}
        token = status.get("token")
        if not isinstance(token, str) or not token:
            raise ClusterApiError(f"context {self.context!r}: {what}: no token in the answer")
        return token, parse_time(status.get("expirationTimestamp"))

    @property
    def retries(self) -> urllib3.Retry:
        """This cluster's retry policy (the scan token's own pool uses it too)."""
        return self._cfg.retries  # type: ignore[no-any-return]

    def delete(
        self,
        kind: str,
        namespace: str,
        name: str,
        *,
        uid: str | None = None,
        background: bool = False,
    ) -> bool:
        """Delete one scan object; False when it was already gone (404 is fine). With `uid`,
        only that very object (ObjectChanged on 409); `background`: propagationPolicy
        Background (the garbage collector removes what it owns)."""
        options: dict[str, Any] = {}
        if uid is not None:
            options["preconditions"] = {"uid": uid}
        if background:
            options["propagationPolicy"] = "Background"
        path = object_path(kind, namespace, name)
        what = f"deleting {kind} {namespace}/{name}"
        try:
            self._call(
                "delete",
                what,
                lambda: self._http.request("DELETE", path, body=options or None),
                not_found=_Gone,
                conflict=lambda: ObjectChanged(
                    f"context {self.context!r}: {what}: it was replaced since it was read "
                    f"(uid {uid} is gone); left alone"
                ),
            )
        except _Gone:
            return False
        return True

    def read_object(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """One scan-shaped object as a plain dict (see `as_dict`); None when there is none."""
        path = object_path(kind, namespace, name)
        try:
            obj = self._call(
                "get",
                f"reading {kind} {namespace}/{name}",
                lambda: self._http.request("GET", path),
                not_found=_Gone,
            )
        except _Gone:
            return None
        return self.as_dict(kind, obj)

    def list_labelled(self, kind: str, selector: str) -> list[dict[str, Any]]:
        """Objects of one kind, in every namespace, matching a label selector (`as_dict`)."""
        group, resource = RESOURCES[kind]
        pages = self._paginate(f"listing {kind}s", f"{group}/{resource}", selector=selector)
        return [self.as_dict(kind, o) for o in pages]

    def as_dict(self, kind: str, obj: Any) -> dict[str, Any]:
        """The object's JSON form, plus `kind` and metadata's main fields at the top."""
        doc: dict[str, Any] = (
            obj if isinstance(obj, dict) else self._api.sanitize_for_serialization(obj)
        )
        meta = doc.get("metadata") or {}
        return doc | {
            "kind": kind,
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "labels": dict(meta.get("labels") or {}),
            "annotations": dict(meta.get("annotations") or {}),
            "created": meta.get("creationTimestamp"),
        }

    # -- plumbing ------------------------------------------------------------------------
    def _paginate(
        self, what: str, path: str, *, selector: str | None = None, page_size: int = 500
    ) -> Iterator[dict[str, Any]]:
        token: str | None = None
        while True:
            query: dict[str, Any] = {"limit": page_size}
            if selector:
                query["labelSelector"] = selector
            if token:
                query["continue"] = token
            page = self._call(
                "list", what, functools.partial(self._http.request, "GET", path, query)
            )
            yield from page.get("items") or []
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return

    def _call(
        self,
        verb: str,
        what: str,
        fn: Callable[[], T],
        *,
        not_found: Callable[[], Exception] | None = None,
        conflict: Callable[[], Exception] | None = None,
    ) -> T:
        fn = metrics.api_call(self.context, verb, fn)
        try:
            return fn()
        except HttpError as e:
            if e.status == 404 and not_found is not None:
                raise not_found() from None
            if e.status == 409 and conflict is not None:
                raise conflict() from None
            raise _translate(self.context, what, e) from None
        except NotJson:
            raise ClusterApiError(
                f"context {self.context!r}: {what}: the API server's answer is not JSON"
            ) from None
        except urllib3.exceptions.HTTPError as e:
            raise ClusterUnavailable(
                f"context {self.context!r}: {what}: cannot reach the API server "
                f"{self._http_host()}: {unreachable_reason(e)}"
            ) from None

    def _http_host(self) -> str:
        return str(self._cfg.host)

    def probe(self, timeout: float = PROBE_TIMEOUT) -> None:
        """The API server answers within about `timeout` seconds (one try, no retries), or
        ClusterUnavailable naming its URL and why (errno text, TLS reason, timeout): what
        `scan` and `submit` check before anything is created or queued."""
        try:
            self._http.probe(timeout)
        except urllib3.exceptions.HTTPError as e:
            raise ClusterUnavailable(
                f"cannot reach the API server {self._http_host()} (context {self.context!r}): "
                f"{unreachable_reason(e)}"
            ) from None


def unreachable_reason(e: BaseException) -> str:
    """Why a connection failed, in the words of the OS or the TLS library, not urllib3's
    wrapper names: "[Errno 111] Connection refused", "[SSL: CERTIFICATE_VERIFY_FAILED]
    certificate verify failed: ...", "connect timed out"."""
    if isinstance(e, urllib3.exceptions.MaxRetryError) and e.reason is not None:
        e = e.reason
    if isinstance(e, urllib3.exceptions.SSLError):
        inner = str(e.args[0] if e.args else e)
        return f"TLS: {(inner.splitlines() or ['handshake failed'])[0][:300]}"
    text = first_line(e)
    if "[Errno" in text:  # NewConnectionError: "<connection object>: Failed to ...: [Errno ..."
        return text[text.index("[Errno") :]
    if isinstance(e, urllib3.exceptions.ConnectTimeoutError):  # NewConnectionError's base too
        return "connect timed out"
    if isinstance(e, urllib3.exceptions.ReadTimeoutError):
        return "no answer (read timed out)"
    if isinstance(e, urllib3.exceptions.ProtocolError) and e.args:
        return f"connection broken: {str(e.args[-1])[:300]}"
    return f"{type(e).__name__}: {text}"


class _Gone(Exception):
    pass


class _Exists(Exception):
    pass


def _translate(context: str, what: str, e: HttpError) -> Exception:
    reason = status_message(e)
    msg = f"context {context!r}: {what}: HTTP {e.status} {reason}".rstrip()
    if e.status in (401, 403):
        return ClusterForbidden(msg)
    if e.status == 404:
        return TargetNotFound(msg)
    if e.status in RETRY_STATUSES or e.status == 0:
        return ClusterUnavailable(msg)
    return ClusterApiError(msg)


class ClientCache:
    """One KubeClient per (kubeconfig, context) per process, shared by threads."""

    def __init__(self, kubeconfig: str, *, retries: int = 5) -> None:
        self.kubeconfig = kubeconfig
        self.retries = retries
        self._clients: dict[str, KubeClient] = {}
        self._lock = threading.Lock()

    def get(self, context: str) -> KubeClient:
        with self._lock:
            client = self._clients.get(context)
            if client is None:
                client = self._clients[context] = KubeClient(
                    self.kubeconfig, context, retries=self.retries
                )
            return client

    def close(self) -> None:
        with self._lock:
            for c in self._clients.values():
                c.close()
            self._clients.clear()
