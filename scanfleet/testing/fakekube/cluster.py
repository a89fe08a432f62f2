"""``FakeCluster``: a fake kube-apiserver on 127.0.0.1 plus seeding and inspection helpers."""

from __future__ import annotations

import contextlib
import re
import secrets
import ssl
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .rbac import Rule
from .server import FakeHTTPServer
from .state import ExecAttempt, ExecHandler, Fault, LoggedRequest, RecordedRequest, State
from .store import KINDS, MANAGED_BY, RBAC, Obj
from .tls import make_pki

ContainerSpec = str | tuple[str, str] | tuple[str, str, str | None]
"""A container name; (name, image); or (name, image, imageID), None for a generated ID."""
CLIENT_CN = "fake-admin"
_RESOURCE_ALIASES = {
    "serviceaccounts": ("", "serviceaccounts"),
    "secrets": ("", "secrets"),
    "pods": ("", "pods"),
    "namespaces": ("", "namespaces"),
    "roles": (RBAC, "roles"),
    "rolebindings": (RBAC, "rolebindings"),
}


def _container(spec: ContainerSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    if isinstance(spec, str):
        name, image, image_id = spec, f"registry.example/{spec}:1.0", None
    elif len(spec) == 2:
        name, image, image_id = spec[0], spec[1], None
    else:
        name, image, image_id = spec
    if image_id is None:
        image_id = f"{image.split(':')[0]}@sha256:{secrets.token_hex(32)}"
    return (
        {"name": name, "image": image},
        {"name": name, "image": image, "imageID": image_id, "ready": True, "restartCount": 0},
    )


class FakeCluster:
    """A fake Kubernetes API server for tests.

    ``with FakeCluster() as c:`` (or ``start()``/``stop()``). ``url``, ``ca_pem`` and
    ``admin_token`` describe how to reach it; ``write_kubeconfig`` writes an admin kubeconfig.
    """

    def __init__(self, tls: bool = True, name: str = "fake") -> None:
        self.tls = tls
        self.name = name
        self.admin_token = "fakeadmin-" + secrets.token_urlsafe(24)
        self._pki = make_pki(client_cn=CLIENT_CN)
        self._state = State()
        self._server: FakeHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle --------------------------------------------------------------------
    def start(self) -> FakeCluster:
        if self._server is not None:
            return self
        ctx = self._ssl_context() if self.tls else None
        self._server = FakeHTTPServer(self._state, ctx, self.admin_token, CLIENT_CN)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fakekube-{self.name}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FakeCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory(prefix="fakekube-") as d:
            cert, key = Path(d, "server.crt"), Path(d, "server.key")
            cert.write_bytes(self._pki.server_cert_pem)
            key.write_bytes(self._pki.server_key_pem)
            ctx.load_cert_chain(cert, key)
        ctx.load_verify_locations(cadata=self._pki.ca_pem.decode())
        ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx

    # --- connection facts ---------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeCluster is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ca_pem(self) -> bytes:
        return self._pki.ca_pem

    @property
    def client_cert_pem(self) -> bytes:
        return self._pki.client_cert_pem

    @property
    def client_key_pem(self) -> bytes:
        return self._pki.client_key_pem

    def write_kubeconfig(
        self,
        path: str | Path,
        context: str = "fake",
        auth: str = "token",
        namespace: str | None = None,
        token: str | None = None,
    ) -> Path:
        """Write a one-context kubeconfig (see ``fakekube.write_kubeconfig`` for ``auth``)."""
        from .kubeconfig import write_kubeconfig

        return write_kubeconfig(
            path, {context: self}, current=context, auth=auth, namespace=namespace, token=token
        )

    # --- seeding ------------------------------------------------------------------------
    def add_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> Obj:
        return self._state.store.add(
            KINDS[("", "namespaces")],
            {
                "metadata": {
                    "name": name,
                    "labels": {"kubernetes.io/metadata.name": name, **(labels or {})},
                },
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            },
        )

    def add_pod(
        self,
        namespace: str,
        name: str,
        containers: Sequence[ContainerSpec] = ("app",),
        init_containers: Sequence[ContainerSpec] = (),
        ephemeral_containers: Sequence[ContainerSpec] = (),
        phase: str = "Running",
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        service_account: str = "default",
    ) -> Obj:
        """Add a pod. A container is a name, ``(name, image)`` or ``(name, image, imageID)``."""
        regular = [_container(c) for c in containers]
        init = [_container(c) for c in init_containers]
        eph = [_container(c) for c in ephemeral_containers]
        running = phase == "Running"
        for _, st in regular:
            st["ready"] = running
            st["state"] = (
                {"running": {"startedAt": "2025-01-01T00:00:00Z"}}
                if running
                else {"waiting": {"reason": "ContainerCreating"}}
            )
        pod: Obj = {
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": dict(labels or {}),
                "annotations": dict(annotations or {}),
            },
            "spec": {
                "containers": [c for c, _ in regular],
                "nodeName": "fake-node",
                "serviceAccountName": service_account,
            },
            "status": {"phase": phase, "containerStatuses": [s for _, s in regular]},
        }
        if init:
            pod["spec"]["initContainers"] = [c for c, _ in init]
            pod["status"]["initContainerStatuses"] = [s for _, s in init]
        if eph:
            pod["spec"]["ephemeralContainers"] = [
                c | {"targetContainerName": regular[0][0]["name"]} if regular else c for c, _ in eph
            ]
            pod["status"]["ephemeralContainerStatuses"] = [s for _, s in eph]
        return self._state.store.add(KINDS[("", "pods")], pod)

    def add_secret(self, namespace: str, name: str) -> Obj:
        return self._state.store.add(
            KINDS[("", "secrets")],
            {
                "metadata": {"name": name, "namespace": namespace},
                "type": "Opaque",
                "data": {"password": "c2VjcmV0"},
            },
        )

    def delete_pod(self, namespace: str, name: str) -> None:
        self._state.store.delete("pods", namespace, name)

    # --- inspection ---------------------------------------------------------------------
    def objects(self, kind: str, namespace: str | None = None) -> list[Obj]:
        """Stored objects of a kind (``serviceaccounts``, ``roles``, ``rolebindings``, ...)."""
        group, resource = _RESOURCE_ALIASES[kind]
        return self._state.store.list(KINDS[(group, resource)].resource, namespace)

    def scanfleet_objects(self) -> list[Obj]:
        """All ServiceAccounts, Roles and RoleBindings labelled managed-by scanfleet."""
        return [
            o
            for o in self._state.store.all_objects(("serviceaccounts", "roles", "rolebindings"))
            if (o["metadata"].get("labels") or {}).get(MANAGED_BY) == "scanfleet"
        ]

    @property
    def peak_scanfleet_serviceaccounts(self) -> int:
        return self._state.peak_scanfleet_sas

    @property
    def requests(self) -> list[RecordedRequest]:
        """(method, path, identity) of every request so far, oldest first (a copy)."""
        with self._state.lock:
            return list(self._state.requests)

    @property
    def request_log(self) -> list[LoggedRequest]:
        """Every request with verb, resource, names, user, status and write body (a copy)."""
        with self._state.lock:
            return list(self._state.log)

    def clear_request_log(self) -> None:
        """Forget the request log (to count the requests of one operation from here on)."""
        with self._state.lock:
            self._state.log.clear()

    @property
    def collected(self) -> list[tuple[str, str, str, str]]:
        """(resource, namespace, name, uid) of everything the garbage collector deleted."""
        with self._state.lock:
            return list(self._state.collected)

    @property
    def exec_attempts(self) -> list[ExecAttempt]:
        with self._state.lock:
            return list(self._state.exec_attempts)

    @property
    def issued_tokens(self) -> list[str]:
        return list(self._state.tokens.issued)

    @property
    def errors(self) -> list[str]:
        """Tracebacks of bugs inside the fake (a test can assert this stays empty)."""
        return list(self._state.errors)

    def expire_token(self, token: str) -> None:
        self._state.tokens.expire(token)

    # --- behaviour knobs ----------------------------------------------------------------
    def fail(
        self,
        method: str,
        path_regex: str,
        status: int,
        times: int = 1,
        retry_after: int | None = None,
        message: str | None = None,
    ) -> None:
        """Answer the next ``times`` requests matching method (or "*") and path with ``status``.

        ``path_regex`` is searched in the request path without its query string.
        """
        with self._state.lock:
            self._state.faults.append(
                Fault(
                    method.upper() if method != "*" else "*",
                    re.compile(path_regex),
                    status,
                    times,
                    retry_after,
                    message,
                )
            )

    def drop_connections(self, method: str, path_regex: str, times: int = 1) -> None:
        """Close the connection without any response for the next ``times`` matching requests."""
        with self._state.lock:
            self._state.faults.append(
                Fault(method.upper() if method != "*" else "*", re.compile(path_regex), None, times)
            )

    def clear_faults(self) -> None:
        with self._state.lock:
            self._state.faults.clear()

    def set_admin_rules(self, rules: Iterable[Rule] | None) -> None:
        """Restrict the admin identity to these PolicyRules (None: superuser again)."""
        self._state.admin_rules = None if rules is None else [dict(r) for r in rules]

    def set_token_lifetime(self, lifetime: Callable[[int], int] | None) -> None:
        """Grant TokenRequests ``lifetime(requested_seconds)`` seconds instead (None: as asked).

        Real API servers cap (``--service-account-max-token-expiration``) or extend the
        requested expiry; ``status.expirationTimestamp`` always tells the truth.
        """
        self._state.token_lifetime = lifetime

    def set_latency(self, seconds: float) -> None:
        """Answer every request `seconds` later (a distant API server; 0: at once)."""
        self._state.latency = max(0.0, seconds)

    def pause_gc(self) -> None:
        """Stop garbage collection (as a slow collector): dependents outlive their owner."""
        self._state.gc_paused = True

    def collect_garbage(self) -> int:
        """Resume garbage collection and run a full pass; returns how many it deleted."""
        from .gc import collect_all

        self._state.gc_paused = False
        return collect_all(self._state)

    def set_exec_handler(self, handler: ExecHandler | None) -> None:
        """``handler(namespace, pod, container, command) -> (stdout, exit_code)`` for exec."""
        self._state.exec_handler = handler

    def __repr__(self) -> str:
        with contextlib.suppress(RuntimeError):
            return f"<FakeCluster {self.name} {self.url}>"
        return f"<FakeCluster {self.name} stopped>"
