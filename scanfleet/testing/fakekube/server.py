"""HTTP(S) plumbing: routing, authentication, authorization, fault injection, exec upgrade."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import socket
import ssl
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from . import discovery, protobuf, wsexec
from .api import Api, Response, status
from .rbac import Attributes, Identity, forbidden_message
from .state import ExecAttempt, State
from .store import KINDS

AUTHZ = "authorization.k8s.io"
RDNs = tuple[tuple[tuple[str, str], ...], ...]
"""A certificate subject as `SSLSocket.getpeercert()` gives it."""


class FakeHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, state: State, ssl_context: ssl.SSLContext | None, admin_token: str, client_cn: str
    ) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.state = state
        self.api = Api(state)
        self.ssl_context = ssl_context
        self.admin_token = admin_token
        self.client_cn = client_cn
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()

    def finish_request(self, request: Any, client_address: Any) -> None:
        conn = request
        if self.ssl_context is not None:
            try:
                conn = self.ssl_context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                request.close()
                return
        with self._conns_lock:
            self._conns.add(conn)
        try:
            self.RequestHandlerClass(conn, client_address, self)  # type: ignore[arg-type]
        except (ConnectionError, ssl.SSLError, TimeoutError):
            pass
        finally:
            with self._conns_lock:
                self._conns.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.state.errors.append(traceback.format_exc())

    def close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)


def parse_path(path: str) -> tuple[str, str | None, str, str | None, str | None] | None:
    """``/api/v1/namespaces/ns/pods/x/exec`` -> (group, namespace, resource, name, subresource).

    None for paths that name no resource (discovery, unknown prefixes).
    """
    parts = path.strip("/").split("/")
    if parts[:2] == ["api", "v1"]:
        group, rest = "", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis" and parts[2] == "v1":
        group, rest = parts[1], parts[3:]
    else:
        return None
    namespace: str | None = None
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        return None
    name = rest[1] if len(rest) > 1 else None
    subresource = rest[2] if len(rest) > 2 else None
    return group, namespace, rest[0], name, subresource


class _Dropped(Exception):
    pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fakekube/1"
    timeout = 30
    # Headers and body go out in two writes; without TCP_NODELAY, Nagle's algorithm and the
    # client's delayed ACK add ~40 ms to every response, as no real API server does.
    disable_nagle_algorithm = True
    server: FakeHTTPServer
    _log_index: int | None = None

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    # --- plumbing -----------------------------------------------------------------------
    def _send(self, resp: Response) -> None:
        self._finish(resp.code)
        data = json.dumps(resp.body).encode()
        self.send_response(resp.code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        for k, v in resp.headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _finish(self, code: int) -> None:
        index = getattr(self, "_log_index", None)
        if index is not None:
            self.server.state.finish(index, code)
            self._log_index = None

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _authenticate(self) -> Identity | None:
        state, srv = self.server.state, self.server
        auth = self.headers.get("Authorization")
        if auth:
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not token:
                return None
            token = token.strip()
            if token == srv.admin_token:
                return state.admin_identity()
            issued = state.tokens.lookup(token)
            if issued is None or issued.expires_at <= dt.datetime.now(dt.UTC):
                return None
            sa = state.store.get("serviceaccounts", issued.namespace, issued.name)
            if sa is None or sa["metadata"]["uid"] != issued.sa_uid:
                return None  # the ServiceAccount is gone: its tokens are revoked
            if issued.pod_uid is not None and not state.tokens.bound_pod_alive(state, issued):
                return None  # bound to a pod that is gone or was replaced
            return Identity.service_account(issued.namespace, issued.name)
        if isinstance(self.connection, ssl.SSLSocket):
            cert = self.connection.getpeercert()
            if cert:
                subject = cast(RDNs, cert.get("subject", ()))
                cn = next((v for rdn in subject for k, v in rdn if k == "commonName"), None)
                if cn == srv.client_cn:
                    return state.admin_identity()
        return None

    def _dispatch(self) -> None:
        state = self.server.state
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        multi = parse_qs(url.query)
        method = self.command
        body_bytes = self._read_body()
        identity = self._authenticate()
        self._log_index = state.record(
            method,
            path,
            identity,
            user_agent=self.headers.get("User-Agent", ""),
            **self._log_fields(method, path, query, body_bytes),
        )
        if state.latency:
            time.sleep(state.latency)  # the simulated network and API server delay
        fault = state.take_fault(method, path)
        if fault is not None:
            if fault.status is None:
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after else {}
            details = {"retryAfterSeconds": fault.retry_after} if fault.retry_after else None
            self._send(
                status(
                    fault.status,
                    fault.message or f"injected {fault.status}",
                    details=details,
                    headers=headers,
                )
            )
            return
        if identity is None:
            self._send(status(401, "Unauthorized", "Unauthorized"))
            return
        try:
            resp = self._route(identity, method, path, query, multi, body_bytes)
        except Exception:
            state.errors.append(traceback.format_exc())
            resp = status(500, "fakekube internal error (see FakeCluster.errors)")
        if resp is not None:
            self._send(resp)

    def _log_fields(
        self, method: str, path: str, query: dict[str, str], body_bytes: bytes
    ) -> dict[str, Any]:
        """What the request log keeps besides method, path and identity (never a token)."""
        parsed = parse_path(path)
        fields: dict[str, Any] = {"query": tuple(sorted(query.items()))}
        if parsed is not None:
            group, namespace, resource, name, sub = parsed
            fields.update(
                group=group,
                namespace=namespace or "",
                resource=resource,
                name=name or "",
                subresource=sub or "",
                verb=self._verb(method, name, sub),
            )
        if method in ("POST", "PUT", "PATCH", "DELETE") and body_bytes:
            fields["body"] = self._decode(body_bytes)[0]
        if parsed is not None and method in ("PUT", "PATCH", "DELETE") and parsed[3]:
            kind = KINDS.get((parsed[0], parsed[2]))
            if kind is not None and not parsed[4]:
                fields["old_object"] = self.server.state.store.get(
                    kind.resource, (parsed[1] or "") if kind.namespaced else "", parsed[3]
                )
        return fields

    def _decode(self, body: bytes) -> tuple[Any, Response | None]:
        ctype = (self.headers.get("Content-Type") or "application/json").split(";")[0].strip()
        try:
            if ctype == "application/vnd.kubernetes.protobuf":
                return protobuf.decode(body), None
            if ctype in (
                "application/json",
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
                "",
            ):
                return (json.loads(body) if body else None), None
        except (ValueError, protobuf.ProtobufError) as exc:
            return None, status(400, f"cannot decode request body: {exc}", "BadRequest")
        return None, status(
            415,
            f"the body of the request was in an unknown format - "
            f"accepted media types include: application/json, "
            f"application/vnd.kubernetes.protobuf (got {ctype})",
        )

    # --- routing ------------------------------------------------------------------------
    def _route(
        self,
        identity: Identity,
        method: str,
        path: str,
        query: dict[str, str],
        multi: dict[str, list[str]],
        body_bytes: bytes,
    ) -> Response | None:
        if method == "GET":
            doc = self._discovery(path)
            if doc is not None:
                return Response(200, doc)
        parsed = parse_path(path)
        if parsed is None:
            return status(404, "the server could not find the requested resource", "NotFound")
        group, namespace, resource, name, sub = parsed
        if group == AUTHZ and resource == "selfsubjectaccessreviews" and name is None:
            verb = "create" if method == "POST" else "unknown"
            attrs = Attributes(verb, resource, group)
            if not self.server.state.allowed(identity, attrs):
                return self._forbidden(identity, attrs)
            body, err = self._decode(body_bytes)
            return err or self.server.api.self_subject_access_review(identity, body)
        kind = KINDS.get((group, resource))
        if kind is None:
            return status(404, "the server could not find the requested resource", "NotFound")
        if kind.namespaced is False:
            namespace = None
        verb = self._verb(method, name, sub)
        attrs = Attributes(verb, resource, group, namespace, name, sub)
        allowed = self.server.state.allowed(identity, attrs)
        if sub == "exec" and resource == "pods" and namespace and name:
            return self._exec(identity, attrs, allowed, multi)
        if not allowed:
            return self._forbidden(identity, attrs)
        api = self.server.api
        if sub is not None:
            if resource == "serviceaccounts" and sub == "token" and method == "POST" and namespace:
                body, err = self._decode(body_bytes)
                return err or api.token_request(namespace, name or "", body)
            return status(404, "the server could not find the requested resource", "NotFound")
        if method == "GET":
            if query.get("watch") in ("1", "true"):
                return status(405, "watch is not supported by the fake", "MethodNotAllowed")
            if name is None:
                return api.list(kind, namespace, query)
            return api.get(kind, namespace or "", name)
        if kind.namespaced and namespace is None:
            return status(405, f"{method} needs a namespace", "MethodNotAllowed")
        if method == "POST" and name is None:
            body, err = self._decode(body_bytes)
            return err or api.create(identity, kind, namespace or "", body)
        if method == "PUT" and name is not None:
            body, err = self._decode(body_bytes)
            return err or api.replace(identity, kind, namespace or "", name, body)
        if method == "PATCH" and name is not None:
            body, err = self._decode(body_bytes)
            return err or api.patch(identity, kind, namespace or "", name, body)
        if method == "DELETE" and name is not None:
            body, err = self._decode(body_bytes)
            if err is not None:
                return err
            options = dict(body) if isinstance(body, dict) else {}
            for key in ("propagationPolicy", "dryRun", "gracePeriodSeconds"):
                if key in query:
                    options.setdefault(key, query[key])
            return api.delete(kind, namespace or "", name, options)
        return status(405, f"{method} is not supported on {path} by the fake", "MethodNotAllowed")

    @staticmethod
    def _verb(method: str, name: str | None, sub: str | None) -> str:
        if sub == "exec":
            return "get" if method == "GET" else "create"
        return {
            "GET": "get" if name else "list",
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete" if name else "deletecollection",
        }.get(method, method.lower())

    def _forbidden(self, identity: Identity, attrs: Attributes) -> Response:
        details: dict[str, Any] = {"kind": attrs.resource}
        if attrs.name:
            details["name"] = attrs.name
        if attrs.group:
            details["group"] = attrs.group
        return status(403, forbidden_message(identity, attrs), "Forbidden", details)

    def _discovery(self, path: str) -> dict[str, Any] | None:
        host = f"127.0.0.1:{self.server.server_address[1]}"
        docs: dict[str, Any] = {
            "/version": discovery.VERSION,
            "/api": discovery.api_versions(host),
            "/api/v1": discovery.core_v1(),
            "/apis": discovery.api_group_list(),
        }
        if path in docs:
            return cast(dict[str, Any], docs[path])
        parts = path.strip("/").split("/")
        if parts[0] == "apis" and len(parts) == 2:
            return discovery.api_group(parts[1])
        if parts[0] == "apis" and len(parts) == 3 and parts[2] == "v1":
            return discovery.group_resources(parts[1])
        return None

    # --- exec -------------------------------------------------------------------------
    def _exec(
        self, identity: Identity, attrs: Attributes, allowed: bool, multi: dict[str, list[str]]
    ) -> Response | None:
        state = self.server.state
        containers = multi.get("container") or []
        container = containers[-1] if containers else None
        command = tuple(multi.get("command") or [])
        namespace, pod_name = attrs.namespace or "", attrs.name or ""
        with state.lock:
            state.exec_attempts.append(
                ExecAttempt(identity.username, namespace, pod_name, container, command, allowed)
            )
        if not allowed:
            return self._forbidden(identity, attrs)
        pod = state.store.get("pods", namespace, pod_name)
        if pod is None:
            return status(
                404, f'pods "{pod_name}" not found', "NotFound", {"name": pod_name, "kind": "pods"}
            )
        names = [c["name"] for c in pod["spec"].get("containers") or []]
        if container is None and len(names) == 1:
            container = names[0]
        if container is None:
            return status(
                400,
                f"a container name must be specified for pod {pod_name}, choose one of: {names}",
                "BadRequest",
            )
        all_names = names + [
            c["name"]
            for key in ("initContainers", "ephemeralContainers")
            for c in pod["spec"].get(key) or []
        ]
        if container not in all_names:
            return status(
                400, f"container {container} is not valid for pod {pod_name}", "BadRequest"
            )
        if not command:
            return status(400, "you must specify at least 1 command", "BadRequest")
        if pod.get("status", {}).get("phase") != "Running":
            return status(
                400,
                f'unable to upgrade connection: container not found ("{container}")',
                "BadRequest",
            )
        upgrade = (self.headers.get("Upgrade") or "").lower()
        if upgrade != "websocket":
            return status(
                400,
                "Upgrade request required (the fake speaks only the WebSocket "
                "exec protocols v4/v5.channel.k8s.io)",
                "BadRequest",
            )
        proto = wsexec.choose_protocol(self.headers.get("Sec-WebSocket-Protocol"))
        if proto is None:
            return status(
                400,
                "none of the offered subprotocols is supported; use "
                f"{' or '.join(wsexec.PROTOCOLS)}",
                "BadRequest",
            )
        handler = state.exec_handler
        if handler is not None:
            stdout, code = handler(namespace, pod_name, container, list(command))
        else:
            stdout, code = f"fake-exec:{container}:{' '.join(command)}\n".encode(), 0
        self._finish(101)
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header(
            "Sec-WebSocket-Accept", wsexec.accept_key(self.headers.get("Sec-WebSocket-Key", ""))
        )
        self.send_header("Sec-WebSocket-Protocol", proto)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        wsexec.run_session(self.connection, stdout, code)
        return None
