"""Evaluate ValidatingAdmissionPolicies with cel-python, as kube-apiserver would, without one.

``load_policies(path)`` reads the policies and bindings of a manifest; ``admission_request``
turns a ``fakekube.LoggedRequest`` into the admission attributes the API server would build
(None for requests admission never sees: reads, discovery); ``admit(policies, attrs)`` runs
matchConstraints, matchConditions, variables and validations and returns a ``Decision``.

What it models and what it does not (the assumptions of tests/deploy/test_admission_policy.py):
- Operations: POST is CREATE (a POST to ``serviceaccounts/X/token`` too, with
  ``request.name`` X and ``subResource`` "token"); PUT and PATCH are UPDATE; DELETE is DELETE;
  a GET or POST to ``pods/X/exec`` (or attach, portforward) is CONNECT, with ``object`` the
  PodExecOptions built from the query. GET, LIST and WATCH are never admitted.
- ``object`` of a CREATE is the request body with the server's defaulting applied as far as
  the policy can see it: ``metadata.namespace`` from the URL, ``apiVersion``/``kind`` from the
  endpoint, ``metadata.name`` from ``generateName`` (the API server generates the name before
  validating admission), a TokenRequest's default ``expirationSeconds`` (3600) and its
  ``audiences``: the API server fills an empty list with its own (``API_AUDIENCES``, kubeadm's
  default) before validating admission (pkg/registry/core/serviceaccount/storage/token.go).
  ``request.name`` of a CREATE is the body's name (the create handler copies it).
- ``oldObject`` of an UPDATE or DELETE is the stored object the fake logged
  (``LoggedRequest.old_object``); ``object`` of a DELETE is null; ``request.options`` is the
  DeleteOptions.
- ``request.userInfo`` is the logged user. ``as_user`` substitutes another user for the fake's
  admin identity: the tests run scanfleet with the admin kubeconfig, and in a cluster the
  same requests come from the worker's ServiceAccount.
- Variables are evaluated eagerly, in order: an error in one fails the policy even when no
  validation reads it (the API server evaluates them lazily; this is stricter).
- Binding ``matchResources`` and ``paramKind``/``params`` are not modelled (deploy/ uses
  neither); every binding is Deny. A CEL error fails the policy (``failurePolicy: Fail``).
- Only standard CEL is available (cel-python has no Kubernetes extension libraries), so a
  policy that used them would fail here with an error rather than pass unnoticed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import celpy
import yaml
from celpy.adapter import json_to_cel
from celpy.celtypes import BoolType, MapType, StringType
from celpy.evaluation import CELEvalError

from scanfleet.testing.fakekube import LoggedRequest

WORKER = "system:serviceaccount:scanfleet:scanfleet"
WORKER_GROUPS = (
    "system:serviceaccounts",
    "system:serviceaccounts:scanfleet",
    "system:authenticated",
)
ADMIN = "fake-admin"
API_AUDIENCES = ("https://kubernetes.default.svc.cluster.local",)
CONNECT_SUBRESOURCES = ("exec", "attach", "portforward")
_KINDS = {
    ("", "serviceaccounts"): "ServiceAccount",
    ("", "pods"): "Pod",
    ("rbac.authorization.k8s.io", "roles"): "Role",
    ("rbac.authorization.k8s.io", "rolebindings"): "RoleBinding",
}
_ENV = celpy.Environment()


@dataclass(frozen=True)
class Policy:
    name: str
    spec: dict[str, Any]


@dataclass
class Decision:
    policy: str
    applies: bool
    failures: list[str] = field(default_factory=list)

    @property
    def allowed(self) -> bool:
        return not self.failures


def load_policies(path: Path) -> list[Policy]:
    """The ValidatingAdmissionPolicies of a manifest that some binding enforces with Deny."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    bound = {
        d["spec"]["policyName"]
        for d in docs
        if d["kind"] == "ValidatingAdmissionPolicyBinding"
        and "Deny" in d["spec"]["validationActions"]
    }
    return [
        Policy(d["metadata"]["name"], d["spec"])
        for d in docs
        if d["kind"] == "ValidatingAdmissionPolicy" and d["metadata"]["name"] in bound
    ]


def _operation(r: LoggedRequest) -> str | None:
    if r.resource == "pods" and r.subresource in CONNECT_SUBRESOURCES:
        return "CONNECT"
    return {"POST": "CREATE", "PUT": "UPDATE", "PATCH": "UPDATE", "DELETE": "DELETE"}.get(r.method)


def _created(r: LoggedRequest) -> dict[str, Any]:
    obj: dict[str, Any] = dict(r.body or {})
    meta = dict(obj.get("metadata") or {})
    if r.subresource == "token":
        obj.setdefault("apiVersion", "authentication.k8s.io/v1")
        obj.setdefault("kind", "TokenRequest")
        spec = dict(obj.get("spec") or {})
        spec.setdefault("expirationSeconds", 3600)
        spec["audiences"] = spec.get("audiences") or list(API_AUDIENCES)
        obj["spec"] = spec
    else:
        obj.setdefault("apiVersion", f"{r.group}/v1" if r.group else "v1")
        obj.setdefault("kind", _KINDS.get((r.group, r.resource), ""))
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "x7k2q"
    if r.namespace:
        meta["namespace"] = r.namespace
    obj["metadata"] = meta
    return obj


def admission_request(
    r: LoggedRequest, as_user: str | None = None, as_groups: Iterable[str] = WORKER_GROUPS
) -> dict[str, Any] | None:
    """The CEL variables kube-apiserver binds for this request (None: not admitted)."""
    op = _operation(r)
    if op is None or not r.resource:
        return None
    user, groups = r.identity, list(r.groups)
    if as_user is not None and r.identity == ADMIN:
        user, groups = as_user, list(as_groups)
    obj: Any = None
    old: Any = r.old_object if op in ("UPDATE", "DELETE") else None
    name = r.name
    if op == "CREATE":
        obj = _created(r)
        name = name or obj["metadata"].get("name", "")
    elif op == "UPDATE":
        obj = r.body
    elif op == "CONNECT":
        q = dict(r.query)
        obj = {
            "kind": "PodExecOptions",
            "apiVersion": "v1",
            "container": q.get("container"),
            "command": [v for k, v in r.query if k == "command"],
        }
    request = {
        "operation": op,
        "name": name,
        "namespace": r.namespace,
        "resource": {"group": r.group, "version": "v1", "resource": r.resource},
        "subResource": r.subresource,
        "kind": {"group": r.group, "version": "v1", "kind": _KINDS.get((r.group, r.resource), "")},
        "userInfo": {"username": user, "groups": groups},
        "dryRun": False,
        "options": dict(r.body or {}) if op == "DELETE" else {},
    }
    return {"request": request, "object": obj, "oldObject": old}


def _rule_matches(rule: Mapping[str, Any], request: Mapping[str, Any]) -> bool:
    res = request["resource"]
    full = (
        f"{res['resource']}/{request['subResource']}" if request["subResource"] else res["resource"]
    )
    ops, groups, resources = rule["operations"], rule["apiGroups"], rule["resources"]
    if not ("*" in ops or request["operation"] in ops):
        return False
    if not ("*" in groups or res["group"] in groups):
        return False
    if full in resources or (not request["subResource"] and "*" in resources):
        return True
    sub = request["subResource"]
    return bool(sub) and (
        f"{res['resource']}/*" in resources or f"*/{sub}" in resources or "*/*" in resources
    )


def _eval(expression: str, activation: Mapping[str, Any]) -> Any:
    program = _ENV.program(_ENV.compile(expression))
    return program.evaluate(dict(activation))


def admit(policies: Iterable[Policy], attrs: Mapping[str, Any]) -> list[Decision]:
    """Each policy's decision; a request is admitted when no decision has failures."""
    return [_admit_one(p, attrs) for p in policies]


def _admit_one(policy: Policy, attrs: Mapping[str, Any]) -> Decision:
    spec, request = policy.spec, attrs["request"]
    if not any(_rule_matches(r, request) for r in spec["matchConstraints"]["resourceRules"]):
        return Decision(policy.name, applies=False)
    activation: dict[str, Any] = {k: json_to_cel(v) for k, v in attrs.items()}
    variables: dict[str, Any] = {}
    activation["variables"] = json_to_cel({})
    decision = Decision(policy.name, applies=True)
    try:
        for cond in spec.get("matchConditions") or []:
            if not _eval(cond["expression"], activation):
                return Decision(policy.name, applies=False)
        for var in spec.get("variables") or []:
            variables[var["name"]] = _eval(var["expression"], activation)
            activation["variables"] = MapType({StringType(k): v for k, v in variables.items()})
    except CELEvalError as e:
        decision.failures.append(f"error: {e.args[0] if e.args else e}")
        return decision
    for v in spec["validations"]:
        try:
            ok = _eval(v["expression"], activation)
        except CELEvalError as e:
            decision.failures.append(f"error in {v['expression']!r}: {e.args[0] if e.args else e}")
            continue
        if not (isinstance(ok, bool | BoolType) and bool(ok)):
            decision.failures.append(_message(v, activation))
    return decision


def _message(validation: Mapping[str, Any], activation: Mapping[str, Any]) -> str:
    if validation.get("messageExpression"):
        try:
            return str(_eval(validation["messageExpression"], activation))
        except CELEvalError:
            pass
    return str(validation.get("message") or f"failed expression: {validation['expression']}")
