"""In-memory object store: namespaced objects keyed by (kind, namespace, name)."""

from __future__ import annotations

import builtins
import copy
import datetime as dt
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

MANAGED_BY = "app.kubernetes.io/managed-by"

Obj = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    """A resource type the fake serves."""

    resource: str  # plural, as in the URL
    kind: str
    group: str = ""
    version: str = "v1"
    namespaced: bool = True
    verbs: tuple[str, ...] = ("get", "list")
    short_names: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """Group-qualified resource as in error messages: ``roles.rbac.authorization.k8s.io``."""
        return f"{self.resource}.{self.group}" if self.group else self.resource


RW = ("create", "delete", "get", "list", "update")
RBAC = "rbac.authorization.k8s.io"
KINDS: dict[tuple[str, str], Kind] = {
    (k.group, k.resource): k
    for k in (
        Kind("namespaces", "Namespace", namespaced=False, short_names=("ns",)),
        Kind("pods", "Pod", short_names=("po",)),
        Kind("serviceaccounts", "ServiceAccount", verbs=RW, short_names=("sa",)),
        Kind("secrets", "Secret"),
        Kind("roles", "Role", group=RBAC, verbs=RW),
        Kind("rolebindings", "RoleBinding", group=RBAC, verbs=RW),
    )
}


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Store:
    """Thread-safe objects by kind. All returned objects are deep copies."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._objects: dict[str, dict[tuple[str, str], Obj]] = {
            k.resource: {} for k in KINDS.values()
        }
        self._rv = 1
        self._listeners: list[Callable[[str, str, Obj], None]] = []

    def listen(self, fn: Callable[[str, str, Obj], None]) -> None:
        """Call ``fn(event, resource, obj)`` under the store lock on every add/delete."""
        self._listeners.append(fn)

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    @property
    def resource_version(self) -> str:
        return str(self._rv)

    def get(self, resource: str, namespace: str, name: str) -> Obj | None:
        with self.lock:
            obj = self._objects[resource].get((namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def exists(self, resource: str, namespace: str, name: str) -> bool:
        with self.lock:
            return (namespace, name) in self._objects[resource]

    def list(
        self,
        resource: str,
        namespace: str | None = None,
        predicate: Callable[[Obj], bool] | None = None,
    ) -> list[Obj]:
        """Objects sorted by (namespace, name); ``namespace=None`` means all namespaces."""
        with self.lock:
            items = sorted(self._objects[resource].items())
            return [
                copy.deepcopy(o)
                for (ns, _), o in items
                if (namespace is None or ns == namespace) and (predicate is None or predicate(o))
            ]

    def add(self, kind: Kind, obj: Obj) -> Obj:
        """Insert (caller checked for conflicts); fills uid, creationTimestamp, resourceVersion."""
        with self.lock:
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now_rfc3339())
            meta["resourceVersion"] = self._next_rv()
            obj["kind"], obj["apiVersion"] = kind.kind, kind.api_version
            key = (meta.get("namespace", "") if kind.namespaced else "", meta["name"])
            self._objects[kind.resource][key] = obj
            for fn in self._listeners:
                fn("ADDED", kind.resource, obj)
            return copy.deepcopy(obj)

    def replace(self, kind: Kind, obj: Obj) -> Obj:
        with self.lock:
            obj = copy.deepcopy(obj)
            meta = obj["metadata"]
            key = (meta.get("namespace", "") if kind.namespaced else "", meta["name"])
            old = self._objects[kind.resource][key]
            meta["uid"] = old["metadata"]["uid"]
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
            meta["resourceVersion"] = self._next_rv()
            obj["kind"], obj["apiVersion"] = kind.kind, kind.api_version
            self._objects[kind.resource][key] = obj
            return copy.deepcopy(obj)

    def delete(self, resource: str, namespace: str, name: str) -> Obj | None:
        with self.lock:
            obj = self._objects[resource].pop((namespace, name), None)
            if obj is not None:
                self._next_rv()
                for fn in self._listeners:
                    fn("DELETED", resource, obj)
            return obj

    def all_objects(self, resources: Iterable[str]) -> builtins.list[Obj]:
        out: builtins.list[Obj] = []
        for r in resources:
            out.extend(self.list(r))
        return out
