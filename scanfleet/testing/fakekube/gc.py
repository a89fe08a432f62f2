"""Garbage collection by ownerReferences, as kube-controller-manager's collector does it.

A namespaced object whose every ownerReference names an owner that does not exist — no
object of that kind and name (in the dependent's namespace, or at cluster scope for a
cluster-scoped owner kind), or one with another uid — is deleted; references to missing
owners are dropped from a dependent that still has a live owner. Owner kinds the fake does not
serve are treated as present (the real collector cannot resolve them either and leaves the
dependent alone).

A real collector works asynchronously, usually within a second or two of the owner's
deletion; the fake collects synchronously, inside the request that deleted the owner or
created the dangling dependent, unless ``State.gc_paused`` is set: then nothing is collected
until ``collect_all`` runs (``FakeCluster.collect_garbage``), which is how a test sees the
window in which dependents outlive their owner. ``propagationPolicy: Foreground`` is
collected like Background (no deletionTimestamp/finalizer phase: the owner is gone at
once); ``Orphan`` drops the owner's reference from its dependents. Collections are recorded in
``State.collected``, never in the request log: the real collector is another client.
"""

from __future__ import annotations

from typing import Any

from .state import State
from .store import KINDS, Kind, Obj

_BY_KIND: dict[tuple[str, str], Kind] = {(k.group, k.kind): k for k in KINDS.values()}
PROPAGATION_POLICIES = ("Background", "Foreground", "Orphan")


def _ref_kind(ref: dict[str, Any]) -> Kind | None:
    api_version = str(ref.get("apiVersion") or "")
    group = api_version.rpartition("/")[0] if "/" in api_version else ""
    return _BY_KIND.get((group, str(ref.get("kind") or "")))


def owner_alive(state: State, ref: dict[str, Any], namespace: str) -> bool:
    kind = _ref_kind(ref)
    if kind is None:
        return True
    owner = state.store.get(
        kind.resource, namespace if kind.namespaced else "", str(ref.get("name") or "")
    )
    return owner is not None and owner["metadata"].get("uid") == ref.get("uid")


def _collect_one(state: State, resource: str, obj: Obj) -> bool:
    """Delete ``obj`` or drop its dangling references; True when anything changed."""
    meta = obj["metadata"]
    refs = meta.get("ownerReferences") or []
    if not refs:
        return False
    ns = meta.get("namespace", "")
    alive = [r for r in refs if owner_alive(state, r, ns)]
    if len(alive) == len(refs):
        return False
    if alive:
        _set_refs(obj, alive)
        state.store.replace(KINDS[_group_of(resource), resource], obj)
        return True
    if state.store.delete(resource, ns, meta["name"]) is not None:
        state.collected.append((resource, ns, meta["name"], meta.get("uid", "")))
    return True


def _set_refs(obj: Obj, refs: list[dict[str, Any]]) -> None:
    if refs:
        obj["metadata"]["ownerReferences"] = refs
    else:
        obj["metadata"].pop("ownerReferences", None)  # the API server omits an empty list


def _group_of(resource: str) -> str:
    return next(k.group for k in KINDS.values() if k.resource == resource)


def _namespaced() -> list[str]:
    return [k.resource for k in KINDS.values() if k.namespaced]


def after_delete(state: State, owner: Obj, policy: str) -> None:
    """Collect (Background/Foreground) or orphan (Orphan) the dependents of a deleted owner."""
    uid = owner["metadata"].get("uid")
    ns = owner["metadata"].get("namespace", "")
    with state.store.lock:
        for resource in _namespaced():
            for dep in state.store.list(
                resource,
                ns,
                lambda o: any(
                    r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or []
                ),
            ):
                if policy == "Orphan":
                    _set_refs(
                        dep, [r for r in dep["metadata"]["ownerReferences"] if r.get("uid") != uid]
                    )
                    state.store.replace(KINDS[_group_of(resource), resource], dep)
                elif not state.gc_paused and _collect_one(state, resource, dep):
                    _cascade(state, dep)


def _cascade(state: State, obj: Obj) -> None:
    """A collected dependent may own others in turn."""
    if (
        state.store.get(
            _resource_of(obj), obj["metadata"].get("namespace", ""), obj["metadata"]["name"]
        )
        is None
    ):
        after_delete(state, obj, "Background")


def _resource_of(obj: Obj) -> str:
    group = obj.get("apiVersion", "").rpartition("/")[0] if "/" in obj.get("apiVersion", "") else ""
    return _BY_KIND[(group, obj["kind"])].resource


def after_create(state: State, resource: str, obj: Obj) -> None:
    """An object created with only dangling owner references is collected at once."""
    if not state.gc_paused:
        with state.store.lock:
            _collect_one(state, resource, obj)


def collect_all(state: State) -> int:
    """One full pass until nothing changes; returns how many objects were collected."""
    before = len(state.collected)
    with state.store.lock:
        changed = True
        while changed:
            changed = False
            for resource in _namespaced():
                for obj in state.store.list(
                    resource, None, lambda o: bool(o["metadata"].get("ownerReferences"))
                ):
                    changed |= _collect_one(state, resource, obj)
    return len(state.collected) - before
