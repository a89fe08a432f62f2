"""The Kubernetes adapter: the only module that imports `kubernetes`.

One `KubeClient` per cluster (kubeconfig context), each with its own `ApiClient` and
`Configuration` — never the client library's global default configuration. Retries of
429 (honouring Retry-After), 5xx and connection errors are urllib3's `Retry`, configured on
that cluster's connection pool. `ApiException` and urllib3 errors are translated here into
the domain errors of `scanfleet.errors`; nothing above this module sees them.

It must never log or raise anything that carries a token, a client key or a kubeconfig.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from scanfleet import metrics
from scanfleet.errors import (
    BadInput,
    ClusterApiError,
    ClusterForbidden,
    ClusterUnavailable,
    TargetNotFound,
)
from scanfleet.kubeconfig import ClusterEndpoint, first_line
from scanfleet.logs import remember
from scanfleet.targets import ContainerInfo, PodInfo

T = TypeVar("T")

REQUEST_TIMEOUT = (10.0, 60.0)  # (connect, read) seconds for each API request
_RECREATE_ATTEMPTS = 5
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class KubeClient:
    """The API calls scanfleet makes against one cluster, as the admin context."""

    def __init__(
        self, kubeconfig: str, context: str, *, retries: int = 5, backoff: float = 0.5
    ) -> None:
        self.context = context
        cfg = k8s.Configuration()
        try:
            k8s_config.load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=cfg,
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
        self._api = k8s.ApiClient(configuration=cfg)
        self.core = k8s.CoreV1Api(self._api)
        self.rbac = k8s.RbacAuthorizationV1Api(self._api)
        self.authn = k8s.AuthenticationV1Api(self._api)

    def close(self) -> None:
        self._api.close()

    # -- endpoint ------------------------------------------------------------------------
    def endpoint(self) -> ClusterEndpoint:
        """Server and CA (inline) of the admin context, for the scan's minimal kubeconfig."""
        cfg = self._cfg
        ca: bytes | None = None
        if cfg.ssl_ca_cert:
            ca = Path(cfg.ssl_ca_cert).read_bytes()
        elif cfg.ca_cert_data:
            raw = cfg.ca_cert_data
            ca = raw.encode() if isinstance(raw, str) else raw
        return ClusterEndpoint(
            server=cfg.host,
            ca_data=ca,
            insecure=not cfg.verify_ssl,
            tls_server_name=cfg.tls_server_name or None,
        )

    # -- pods and namespaces -------------------------------------------------------------
    def read_pod(self, namespace: str, name: str) -> PodInfo:
        pod = self._call(
            f"reading pod {namespace}/{name}",
            lambda: self.core.read_namespaced_pod(
                name, namespace, _request_timeout=REQUEST_TIMEOUT
            ),
            not_found=lambda: TargetNotFound(
                f"pod {namespace}/{name} not found in context {self.context!r}"
            ),
        )
        return _pod_info(pod)

    def list_namespaces(self) -> list[str]:
        return [
            ns.metadata.name
            for ns in self._paginate("listing namespaces", self.core.list_namespace)
        ]

    def list_pods(
        self, namespace: str | None, selector: str | None = None, page_size: int = 500
    ) -> Iterator[PodInfo]:
        """Pods in a namespace (or all), paginated with limit/continue."""
        kwargs: dict[str, Any] = {"label_selector": selector} if selector else {}
        if namespace is None:
            pages = self._paginate(
                "listing pods", self.core.list_pod_for_all_namespaces, page_size=page_size, **kwargs
            )
        else:
            pages = self._paginate(
                f"listing pods in {namespace}",
                self.core.list_namespaced_pod,
                namespace,
                page_size=page_size,
                **kwargs,
            )
        for pod in pages:
            yield _pod_info(pod)

    # -- scan identity objects -----------------------------------------------------------
    def create_object(self, kind: str, namespace: str, body: dict[str, Any]) -> None:
        """Create a ServiceAccount, Role or RoleBinding of a scan.

        If an earlier attempt of the same scan left one (409), it is deleted and created
        again rather than updated: scanfleet's own ClusterRole grants no `update`, and a
        recreated ServiceAccount also invalidates any token the earlier attempt obtained.
        """
        name = body["metadata"]["name"]
        create = {
            "ServiceAccount": self.core.create_namespaced_service_account,
            "Role": self.rbac.create_namespaced_role,
            "RoleBinding": self.rbac.create_namespaced_role_binding,
        }[kind]
        what = f"creating {kind} {namespace}/{name}"
        for attempt in range(_RECREATE_ATTEMPTS):
            try:
                self._call(
                    what,
                    functools.partial(create, namespace, body, _request_timeout=REQUEST_TIMEOUT),
                    conflict=_Exists,
                )
                return
            except _Exists:
                # Deletion may finish asynchronously: back off a little before recreating.
                self.delete(kind, namespace, name)
                time.sleep(min(0.2 * 2**attempt, 2.0))
        raise ClusterApiError(
            f"context {self.context!r}: {what}: an object of that name kept reappearing"
        )

    def create_service_account(self, namespace: str, body: dict[str, Any]) -> None:
        self.create_object("ServiceAccount", namespace, body)

    def create_role(self, namespace: str, body: dict[str, Any]) -> None:
        self.create_object("Role", namespace, body)

    def create_role_binding(self, namespace: str, body: dict[str, Any]) -> None:
        self.create_object("RoleBinding", namespace, body)

    def create_token(self, namespace: str, service_account: str, ttl: int) -> str:
        """A bound token from the TokenRequest API. The return value is a secret."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": ttl},
        }
        resp = self._call(
            f"requesting a token for ServiceAccount {namespace}/{service_account}",
            lambda: self.core.create_namespaced_service_account_token(
                service_account, namespace, body, _request_timeout=REQUEST_TIMEOUT
            ),
        )
        token: str = resp.status.token
        return token

    def wait_for_access(self, namespace: str, pod: str, token: str,
                        timeout: float = 15.0) -> None:
        """Wait until a scan token can read its pod, as the auditor will.

        Authorizers in HA control planes work from caches: right after the RoleBinding is
        created, a request with the new token can be refused for a moment. One GET here
        (retried on 401/403 until `timeout`) keeps that race away from the audit.
        """
        ep = self.endpoint()
        pool = urllib3.PoolManager(
            cert_reqs="CERT_NONE" if ep.insecure else "CERT_REQUIRED",
            ca_cert_data=ep.ca_data.decode() if ep.ca_data and not ep.insecure else None,
            server_hostname=ep.tls_server_name,
            retries=self._cfg.retries,
            timeout=urllib3.Timeout(connect=REQUEST_TIMEOUT[0], read=REQUEST_TIMEOUT[1]),
        )
        url = f"{ep.server.rstrip('/')}/api/v1/namespaces/{namespace}/pods/{pod}"
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        deadline = time.monotonic() + timeout
        delay = 0.1
        try:
            while True:
                try:
                    status = pool.request("GET", url, headers=headers).status
                except urllib3.exceptions.HTTPError as e:
                    raise ClusterUnavailable(
                        f"context {self.context!r}: checking the scan identity's access to "
                        f"pod {namespace}/{pod}: cannot reach the API server "
                        f"({type(e).__name__})"
                    ) from None
                if status == 200:
                    return
                if status not in (401, 403) or time.monotonic() + delay > deadline:
                    error = ClusterForbidden if status in (401, 403) else ClusterApiError
                    raise error(
                        f"context {self.context!r}: the scan identity could not read pod "
                        f"{namespace}/{pod} (HTTP {status}) within {timeout:g} s; RBAC may "
                        "not have propagated, or an admission webhook changed its Role"
                    )
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        finally:
            pool.clear()

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete one scan object; False when it was already gone (404 is fine)."""
        fn = {
            "ServiceAccount": self.core.delete_namespaced_service_account,
            "Role": self.rbac.delete_namespaced_role,
            "RoleBinding": self.rbac.delete_namespaced_role_binding,
        }[kind]
        try:
            self._call(
                f"deleting {kind} {namespace}/{name}",
                lambda: fn(name, namespace, _request_timeout=REQUEST_TIMEOUT),
                not_found=_Gone,
            )
        except _Gone:
            return False
        return True

    def list_labelled(self, kind: str, selector: str) -> list[dict[str, Any]]:
        """Objects of one kind, in every namespace, matching a label selector.

        Returned as plain dicts of metadata (name, namespace, labels, annotations).
        """
        fn = {
            "ServiceAccount": self.core.list_service_account_for_all_namespaces,
            "Role": self.rbac.list_role_for_all_namespaces,
            "RoleBinding": self.rbac.list_role_binding_for_all_namespaces,
        }[kind]
        return [
            {
                "kind": kind,
                "name": o.metadata.name,
                "namespace": o.metadata.namespace,
                "labels": dict(o.metadata.labels or {}),
                "annotations": dict(o.metadata.annotations or {}),
            }
            for o in self._paginate(f"listing {kind}s", fn, label_selector=selector)
        ]

    # -- plumbing ------------------------------------------------------------------------
    def _paginate(
        self, what: str, fn: Callable[..., Any], *args: Any, page_size: int = 500, **kwargs: Any
    ) -> Iterator[Any]:
        token: str | None = None
        while True:
            extra = {"_continue": token} if token else {}
            page = self._call(
                what,
                functools.partial(
                    fn, *args, limit=page_size, _request_timeout=REQUEST_TIMEOUT, **kwargs, **extra
                ),
            )
            yield from page.items or []
            token = page.metadata._continue if page.metadata else None
            if not token:
                return

    def _call(
        self,
        what: str,
        fn: Callable[[], T],
        *,
        not_found: Callable[[], Exception] | None = None,
        conflict: Callable[[], Exception] | None = None,
    ) -> T:
        fn = metrics.api_call(self.context, what, fn)
        try:
            return fn()
        except ApiException as e:
            if e.status == 404 and not_found is not None:
                raise not_found() from None
            if e.status == 409 and conflict is not None:
                raise conflict() from None
            raise _translate(self.context, what, e) from None
        except urllib3.exceptions.HTTPError as e:
            raise ClusterUnavailable(
                f"context {self.context!r}: {what}: cannot reach the API server "
                f"({type(e).__name__})"
            ) from None


class _Gone(Exception):
    pass


class _Exists(Exception):
    pass


def _translate(context: str, what: str, e: ApiException) -> Exception:
    reason = _status_message(e)
    msg = f"context {context!r}: {what}: HTTP {e.status} {reason}".rstrip()
    if e.status in (401, 403):
        return ClusterForbidden(msg)
    if e.status == 404:
        return TargetNotFound(msg)
    if e.status in RETRY_STATUSES or e.status == 0:
        return ClusterUnavailable(msg)
    return ClusterApiError(msg)


def _status_message(e: ApiException) -> str:
    """The `message` of a `kind: Status` body, else the HTTP reason; never the raw body."""
    try:
        body = json.loads(e.body) if e.body else {}
    except (TypeError, ValueError):
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    text = str(message or e.reason or "")
    return text[:500]


def _pod_info(pod: Any) -> PodInfo:
    statuses = {s.name: s for s in (pod.status.container_statuses or [])} if pod.status else {}
    containers = []
    for c in pod.spec.containers or []:
        st = statuses.get(c.name)
        containers.append(
            ContainerInfo(
                name=c.name,
                image=(st.image if st and st.image else c.image),
                image_id=(st.image_id or None) if st else None,
            )
        )
    return PodInfo(
        namespace=pod.metadata.namespace,
        name=pod.metadata.name,
        phase=pod.status.phase if pod.status else None,
        containers=tuple(containers),
        labels=dict(pod.metadata.labels or {}),
    )


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

