"""Resource request handling: CRUD, lists with selectors and pagination, TokenRequest, SSAR.

Handlers return a ``Response``; RBAC has already been checked by the server for the request
itself, except for the escalation checks on Role/RoleBinding writes, which live here.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from dataclasses import dataclass, field
from typing import Any

from . import gc
from .rbac import Attributes, Identity, format_rules, uncovered_rules
from .selectors import SelectorError, parse_field_selector, parse_label_selector
from .state import State
from .store import KINDS, RBAC, Kind, Obj

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
    "or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
MIN_TOKEN_SECONDS = 600


@dataclass
class Response:
    code: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "AlreadyExists",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


def status(
    code: int,
    message: str,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or REASONS.get(code, "Unknown"),
        "code": code,
    }
    if details is not None:
        body["details"] = details
    return Response(code, body, headers or {})


def _details(kind: Kind, name: str | None) -> dict[str, Any]:
    d: dict[str, Any] = {"name": name or "", "kind": kind.resource}
    if kind.group:
        d["group"] = kind.group
    return d


def not_found(kind: Kind, name: str) -> Response:
    return status(404, f'{kind.qualified} "{name}" not found', "NotFound", _details(kind, name))


def invalid(kind: Kind, name: str, causes: list[tuple[str, Any, str]]) -> Response:
    """422 with causes given as (field, value, problem)."""
    texts = [
        f"{f}: Invalid value: {json.dumps(v)}: {p}" if v != "" else f"{f}: {p}"
        for f, v, p in causes
    ]
    msg = f"{kind.kind}.{kind.group or ''}".rstrip(".") if kind.group else kind.kind
    message = f'{msg} "{name}" is invalid: ' + (
        texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    )
    details = {
        "name": name,
        "kind": kind.kind,
        "causes": [
            {"reason": "FieldValueInvalid", "message": t, "field": c[0]}
            for t, c in zip(texts, causes, strict=True)
        ],
    }
    if kind.group:
        details["group"] = kind.group
    return status(422, message, "Invalid", details)


def _encode_continue(rv: str, after: tuple[str, str]) -> str:
    raw = json.dumps({"v": "fakekube/1", "rv": rv, "after": list(after)}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_continue(token: str) -> tuple[str, str]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        ns, name = data["after"]
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise SelectorError("continue key is not valid") from exc
    return str(ns), str(name)


def _merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(out.get(k), v)
    return out


def _precondition_failed(kind: Kind, current: Obj, opts: dict[str, Any]) -> Response | None:
    """409 Conflict as kube-apiserver answers a DELETE whose preconditions do not hold."""
    pre = opts.get("preconditions") or {}
    meta = current["metadata"]
    for field_name, key, label in (
        ("uid", "uid", "UID"),
        ("resourceVersion", "resourceVersion", "ResourceVersion"),
    ):
        want = pre.get(field_name)
        if want is not None and want != meta.get(key):
            return status(
                409,
                f"Operation cannot be fulfilled on {kind.qualified} "
                f'"{meta["name"]}": Precondition failed: {label} in precondition: '
                f"{want}, {label} in object meta: {meta.get(key)}",
                "Conflict",
                _details(kind, meta["name"]),
            )
    return None


class Api:
    def __init__(self, state: State) -> None:
        self.state = state
        self.store = state.store

    # --- reads ------------------------------------------------------------------------
    def list(self, kind: Kind, namespace: str | None, query: dict[str, str]) -> Response:
        try:
            labels = parse_label_selector(query.get("labelSelector"))
            fields = parse_field_selector(query.get("fieldSelector"))
            after = _decode_continue(query["continue"]) if query.get("continue") else None
        except SelectorError as exc:
            return status(400, str(exc), "BadRequest")
        try:
            limit = int(query.get("limit") or 0)
        except ValueError:
            return status(400, f"invalid limit {query.get('limit')!r}", "BadRequest")
        items = self.store.list(
            kind.resource,
            namespace,
            lambda o: labels(o["metadata"].get("labels") or {}) and fields(o),
        )

        def key(o: Obj) -> tuple[str, str]:
            return (o["metadata"].get("namespace", ""), o["metadata"]["name"])

        if after is not None:
            items = [o for o in items if key(o) > after]
        meta: dict[str, Any] = {"resourceVersion": self.store.resource_version}
        if limit > 0 and len(items) > limit:
            meta["continue"] = _encode_continue(meta["resourceVersion"], key(items[limit - 1]))
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        for o in items:
            o.pop("kind", None)
            o.pop("apiVersion", None)
        return Response(
            200,
            {
                "kind": f"{kind.kind}List",
                "apiVersion": kind.api_version,
                "metadata": meta,
                "items": items,
            },
        )

    def get(self, kind: Kind, namespace: str, name: str) -> Response:
        obj = self.store.get(kind.resource, namespace if kind.namespaced else "", name)
        return Response(200, obj) if obj is not None else not_found(kind, name)

    # --- writes -----------------------------------------------------------------------
    def _namespace_missing(self, namespace: str) -> Response | None:
        if self.store.exists("namespaces", "", namespace):
            return None
        return not_found(KINDS[("", "namespaces")], namespace)

    def _validate(self, kind: Kind, obj: Obj, name: str) -> Response | None:
        causes: list[tuple[str, Any, str]] = []
        if not name:
            causes.append(("metadata.name", "", "Required value: name or generateName is required"))
        elif len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
            causes.append(("metadata.name", name, SUBDOMAIN_MSG))
        if kind.resource == "roles":
            for i, rule in enumerate(obj.get("rules") or []):
                if not rule.get("verbs"):
                    causes.append(
                        (
                            f"rules[{i}].verbs",
                            "",
                            "Required value: verbs must contain at least one value",
                        )
                    )
                if rule.get("nonResourceURLs"):
                    causes.append(
                        (
                            f"rules[{i}].nonResourceURLs",
                            "",
                            "Invalid value: namespaced rules cannot apply to non-resource URLs",
                        )
                    )
                elif not rule.get("apiGroups"):
                    causes.append(
                        (
                            f"rules[{i}].apiGroups",
                            "",
                            "Required value: resource rules must supply at least one api group",
                        )
                    )
                elif not rule.get("resources"):
                    causes.append(
                        (
                            f"rules[{i}].resources",
                            "",
                            "Required value: resource rules must supply at least one resource",
                        )
                    )
        if kind.resource == "rolebindings":
            ref = obj.get("roleRef") or {}
            if ref.get("apiGroup") != RBAC:
                causes.append(
                    ("roleRef.apiGroup", ref.get("apiGroup", ""), f'supported values: "{RBAC}"')
                )
            if ref.get("kind") not in ("Role", "ClusterRole"):
                causes.append(
                    ("roleRef.kind", ref.get("kind", ""), 'supported values: "Role", "ClusterRole"')
                )
            if not ref.get("name"):
                causes.append(("roleRef.name", "", "Required value"))
            for i, s in enumerate(obj.get("subjects") or []):
                if s.get("kind") not in ("ServiceAccount", "User", "Group"):
                    causes.append(
                        (
                            f"subjects[{i}].kind",
                            s.get("kind", ""),
                            'supported values: "ServiceAccount", "User", "Group"',
                        )
                    )
                if not s.get("name"):
                    causes.append((f"subjects[{i}].name", "", "Required value"))
        return invalid(kind, name or "", causes) if causes else None

    def _escalation(
        self, identity: Identity, kind: Kind, namespace: str, obj: Obj, name: str
    ) -> Response | None:
        """Real RBAC refuses to let anyone grant permissions they do not hold themselves."""
        state = self.state
        if state.is_superuser(identity):
            return None
        owner = state.rules_for(identity, namespace)
        if kind.resource == "roles":
            if state.allowed(identity, Attributes("escalate", "roles", RBAC, namespace, name)):
                return None
            wanted = obj.get("rules") or []
        elif kind.resource == "rolebindings":
            ref = obj.get("roleRef") or {}
            if state.allowed(
                identity,
                Attributes(
                    "bind",
                    "roles" if ref.get("kind") == "Role" else "clusterroles",
                    RBAC,
                    namespace,
                    ref.get("name"),
                ),
            ):
                return None
            if ref.get("kind") != "Role":
                return status(
                    403,
                    f'{kind.qualified} "{name}" is forbidden: the fake only '
                    "evaluates bindings to Roles",
                    "Forbidden",
                    _details(kind, name),
                )
            role = self.store.get("roles", namespace, ref.get("name", ""))
            if role is None:
                return not_found(KINDS[(RBAC, "roles")], ref.get("name", ""))
            wanted = role.get("rules") or []
        else:
            return None
        missing = uncovered_rules(owner, wanted)
        if not missing:
            return None
        groups = " ".join(f'"{g}"' for g in identity.groups)
        message = (
            f'{kind.qualified} "{name}" is forbidden: user "{identity.username}" '
            f"(groups=[{groups}]) is attempting to grant RBAC permissions not currently "
            f"held:\n{format_rules(missing)}"
        )
        return status(403, message, "Forbidden", _details(kind, name))

    def create(self, identity: Identity, kind: Kind, namespace: str, obj: Any) -> Response:
        if kind.resource not in ("serviceaccounts", "roles", "rolebindings"):
            return status(
                405, f"create is not supported on {kind.resource} by the fake", "MethodNotAllowed"
            )
        if not isinstance(obj, dict):
            return status(400, "the request body must be a JSON object", "BadRequest")
        meta = obj.setdefault("metadata", {})
        if meta.get("namespace") not in (None, "", namespace):
            return status(
                400,
                "the namespace of the provided object does not match the "
                "namespace sent on the request",
                "BadRequest",
            )
        meta["namespace"] = namespace
        if not meta.get("name") and meta.get("generateName"):
            import secrets

            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        name = meta.get("name") or ""
        if (err := self._validate(kind, obj, name)) is not None:
            return err
        if (err := self._namespace_missing(namespace)) is not None:
            return err
        if (err := self._escalation(identity, kind, namespace, obj, name)) is not None:
            return err
        for k in ("uid", "resourceVersion", "creationTimestamp"):
            meta.pop(k, None)
        with self.store.lock:
            if self.store.exists(kind.resource, namespace, name):
                return status(
                    409,
                    f'{kind.qualified} "{name}" already exists',
                    "AlreadyExists",
                    _details(kind, name),
                )
            created = self.store.add(kind, obj)
            gc.after_create(self.state, kind.resource, created)
            return Response(201, created)

    def replace(
        self, identity: Identity, kind: Kind, namespace: str, name: str, obj: Any
    ) -> Response:
        if kind.resource not in ("serviceaccounts", "roles", "rolebindings"):
            return status(
                405, f"update is not supported on {kind.resource} by the fake", "MethodNotAllowed"
            )
        if not isinstance(obj, dict):
            return status(400, "the request body must be a JSON object", "BadRequest")
        meta = obj.setdefault("metadata", {})
        if meta.get("name") != name:
            return status(
                400, "the name of the object does not match the name on the URL", "BadRequest"
            )
        meta["namespace"] = namespace
        if (err := self._validate(kind, obj, name)) is not None:
            return err
        if (err := self._escalation(identity, kind, namespace, obj, name)) is not None:
            return err
        with self.store.lock:
            current = self.store.get(kind.resource, namespace, name)
            if current is None:
                return not_found(kind, name)
            rv = meta.get("resourceVersion")
            if rv and rv != current["metadata"]["resourceVersion"]:
                return status(
                    409,
                    f'Operation cannot be fulfilled on {kind.qualified} "{name}"'
                    ": the object has been modified; please apply your changes to "
                    "the latest version and try again",
                    "Conflict",
                    _details(kind, name),
                )
            return Response(200, self.store.replace(kind, obj))

    def patch(
        self, identity: Identity, kind: Kind, namespace: str, name: str, patch: Any
    ) -> Response:
        """JSON merge patch (strategic merge patches are treated the same way)."""
        if not isinstance(patch, dict):
            return status(400, "only JSON merge patches are supported by the fake", "BadRequest")
        current = self.store.get(kind.resource, namespace if kind.namespaced else "", name)
        if current is None:
            return not_found(kind, name)
        merged = _merge(current, patch)
        merged["metadata"].pop("resourceVersion", None)
        return self.replace(identity, kind, namespace, name, merged)

    def delete(
        self, kind: Kind, namespace: str, name: str, options: dict[str, Any] | None = None
    ) -> Response:
        """Delete with DeleteOptions (body and query merged): preconditions, propagation."""
        if kind.resource not in ("serviceaccounts", "roles", "rolebindings"):
            return status(
                405, f"delete is not supported on {kind.resource} by the fake", "MethodNotAllowed"
            )
        opts = options or {}
        policy = opts.get("propagationPolicy") or (
            "Orphan" if opts.get("orphanDependents") else "Background"
        )
        if policy not in gc.PROPAGATION_POLICIES:
            return invalid(
                Kind("deleteoptions", "DeleteOptions"),
                name,
                [
                    (
                        "propagationPolicy",
                        policy,
                        'Unsupported value: supported values: "Foreground", "Background", "Orphan"',
                    )
                ],
            )
        with self.store.lock:
            current = self.store.get(kind.resource, namespace, name)
            if current is None:
                return not_found(kind, name)
            if (err := _precondition_failed(kind, current, opts)) is not None:
                return err
            if opts.get("dryRun"):
                obj: Obj | None = current
            else:
                obj = self.store.delete(kind.resource, namespace, name)
                if obj is not None:
                    gc.after_delete(self.state, obj, policy)
        if obj is None:
            return not_found(kind, name)
        if kind.resource == "serviceaccounts":
            return Response(200, obj)  # core resources answer with the deleted object
        details = _details(kind, name) | {"uid": obj["metadata"]["uid"]}
        return Response(
            200,
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": details,
            },
        )

    # --- special endpoints --------------------------------------------------------------
    def token_request(self, namespace: str, name: str, body: Any) -> Response:
        sa_kind = KINDS[("", "serviceaccounts")]
        sa = self.store.get("serviceaccounts", namespace, name)
        if sa is None:
            return not_found(sa_kind, name)
        spec = (body or {}).get("spec") or {} if isinstance(body, dict) else {}
        pod, refused = self._bound_pod(namespace, name, spec.get("boundObjectRef"))
        if refused is not None:
            return refused
        seconds = spec.get("expirationSeconds")
        seconds = 3600 if seconds is None else int(seconds)
        if seconds < MIN_TOKEN_SECONDS:
            kind = Kind("serviceaccounts", "TokenRequest", group="authentication.k8s.io")
            return invalid(
                kind,
                name,
                [
                    (
                        "spec.expirationSeconds",
                        seconds,
                        "may not specify a duration less than 10 minutes",
                    )
                ],
            )
        lifetime = self.state.token_lifetime
        granted = seconds if lifetime is None else int(lifetime(seconds))
        issued = self.state.tokens.issue(namespace, name, sa["metadata"]["uid"], granted)
        if pod is not None:
            self.state.tokens.bind(issued.token, pod["metadata"]["name"], pod["metadata"]["uid"])
        created = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return Response(
            201,
            {
                "kind": "TokenRequest",
                "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"name": name, "namespace": namespace, "creationTimestamp": created},
                "spec": {
                    "audiences": spec.get("audiences") or ["https://kubernetes.default.svc"],
                    "expirationSeconds": seconds,
                    "boundObjectRef": spec.get("boundObjectRef"),
                },
                "status": {
                    "token": issued.token,
                    "expirationTimestamp": issued.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                },
            },
        )

    def _bound_pod(
        self, namespace: str, sa_name: str, ref: Any
    ) -> tuple[Obj | None, Response | None]:
        """The pod a TokenRequest binds its token to, or the refusal kube-apiserver sends."""
        if not isinstance(ref, dict):
            return None, None
        if (ref.get("apiVersion") or "v1", ref.get("kind")) != ("v1", "Pod"):
            return None, status(
                400, f"cannot bind token to object of type {ref.get('kind')}", "BadRequest"
            )
        pod = self.store.get("pods", namespace, str(ref.get("name") or ""))
        if pod is None:
            return None, not_found(KINDS[("", "pods")], str(ref.get("name") or ""))
        if (pod.get("spec") or {}).get("serviceAccountName", "default") != sa_name:
            return None, status(
                400,
                f'cannot bind token for serviceaccount "{sa_name}" to pod '
                "running with different serviceaccount name.",
                "BadRequest",
            )
        return pod, None

    def self_subject_access_review(self, identity: Identity, body: Any) -> Response:
        spec = (body.get("spec") or {}) if isinstance(body, dict) else {}
        ra = spec.get("resourceAttributes")
        if ra:
            resource = ra.get("resource") or ""
            attrs = Attributes(
                ra.get("verb") or "",
                resource,
                ra.get("group") or "",
                ra.get("namespace") or None,
                ra.get("name") or None,
                ra.get("subresource") or None,
            )
            allowed = self.state.allowed(identity, attrs)
        else:
            allowed = True  # non-resource URLs (discovery) are open to authenticated users
        result: dict[str, bool | str] = {"allowed": allowed}
        if allowed and self.state.is_superuser(identity):
            result["reason"] = "superuser (system:masters)"
        return Response(
            201,
            {
                "kind": "SelfSubjectAccessReview",
                "apiVersion": "authorization.k8s.io/v1",
                "metadata": {"creationTimestamp": None},
                "spec": spec,
                "status": result,
            },
        )
