"""Discovery (SPEC §2): which containers a `submit` without explicit targets scans.

    contexts x namespaces (--namespace..., or --all-namespaces minus --exclude-namespace)
             x pods matching --selector, in phase Running, listed with limit/continue
             → every regular container (never init or ephemeral containers)

Also the pieces both discovery and explicit targets share: `Entry` (a target plus what the
API said about it) and `dedupe_images` (one scan per distinct image ID; the others are
covered by it). Talks to Kubernetes only through `KubeClient`; never creates anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from scanfleet.core.errors import BadInput, ScanError
from scanfleet.core.targets import Target, check_label, check_selector, scan_id_for
from scanfleet.kube.client import ClientCache, KubeClient

log = structlog.get_logger(__name__)

PAGE_SIZE = 500


@dataclass(frozen=True)
class Entry:
    """A target to scan, with what the API said about it, or why it cannot be scanned."""

    target: Target
    image: str | None = None
    image_id: str | None = None
    error: Mapping[str, str] | None = None
    """{kind, message} when the target could not be resolved at submit time."""
    covers: tuple[Entry, ...] = field(default=())
    """Targets with the same image ID that this entry's scan also answers (dedupe)."""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            **self.target.to_dict(),
            "image": self.image,
            "image_id": self.image_id,
        }
        if self.error is not None:
            d["error"] = dict(self.error)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Entry:
        return cls(
            Target.from_dict(d),
            d.get("image"),
            d.get("image_id"),
            d.get("error"),
        )

    def size(self) -> int:
        """Summaries this entry produces: its own and one per covered target."""
        return 1 + len(self.covers)


@dataclass(frozen=True)
class Scope:
    """What discovery looks at: validated up front, before any API call."""

    contexts: Sequence[str]
    namespaces: Sequence[str] = ()
    all_namespaces: bool = False
    exclude_namespaces: Sequence[str] = ()
    selector: str | None = None

    def __post_init__(self) -> None:
        if not self.namespaces and not self.all_namespaces:
            raise BadInput(
                "nothing to scan: give TARGET..., --targets-file, --namespace N or --all-namespaces"
            )
        if self.namespaces and self.all_namespaces:
            raise BadInput("--namespace and --all-namespaces exclude each other")
        for ns in (*self.namespaces, *self.exclude_namespaces):
            check_label(ns, "namespace")
        check_selector(self.selector)


def discover(clients: ClientCache, scope: Scope, page_size: int = PAGE_SIZE) -> list[Entry]:
    """Every regular container of every Running pod in scope, in a stable order."""
    entries: list[Entry] = []
    for context in scope.contexts:
        kube = clients.get(context)
        found = list(_discover_context(kube, context, scope, page_size))
        log.info("discovery.context", context=context, containers=len(found))
        entries.extend(found)
    return list({e.target: e for e in entries}.values())


def _discover_context(
    kube: KubeClient, context: str, scope: Scope, page_size: int
) -> Iterable[Entry]:
    excluded = set(scope.exclude_namespaces)
    namespaces: list[str | None]
    if scope.all_namespaces:
        namespaces = [None]  # one paginated list across namespaces
    else:
        namespaces = [ns for ns in dict.fromkeys(scope.namespaces) if ns not in excluded]
    for ns in namespaces:
        for pod in kube.list_pods(ns, scope.selector, page_size=page_size):
            if pod.namespace in excluded or pod.phase != "Running":
                continue
            for c in pod.containers:
                yield Entry(Target(context, pod.namespace, pod.name, c.name), c.image, c.image_id)


def resolve(clients: ClientCache, targets: Iterable[Target], *, need_images: bool) -> list[Entry]:
    """Explicit targets → entries. A pod-level target expands to its regular containers.

    Reads a pod only when it must: to expand a pod-level target, or (with `need_images`,
    for --dedupe-images) to learn image IDs. A pod that cannot be read becomes an entry
    carrying the error, so the run still has one result per target.
    """
    out: dict[Target, Entry] = {}
    pods: dict[tuple[str, str, str], Any] = {}
    for t in targets:
        if t.container is not None and not need_images:
            out.setdefault(t, Entry(t))
            continue
        key = (t.context, t.namespace, t.pod)
        if key not in pods:
            try:
                pods[key] = clients.get(t.context).read_pod(t.namespace, t.pod)
            except ScanError as e:
                pods[key] = e
        pod = pods[key]
        if isinstance(pod, ScanError):
            if t.container is None:
                out.setdefault(t, Entry(t, error={"kind": pod.kind, "message": str(pod)}))
            else:
                out.setdefault(t, Entry(t))  # the scan itself reports the error
            continue
        containers = (
            pod.containers
            if t.container is None
            else [c for c in pod.containers if c.name == t.container]
        )
        if t.container is not None and not containers:
            out.setdefault(t, Entry(t))  # the scan reports target_not_found
        for c in containers:
            tc = t.with_container(c.name)
            out.setdefault(tc, Entry(tc, c.image, c.image_id))
    return list(out.values())


def dedupe_images(entries: Sequence[Entry]) -> list[Entry]:
    """One entry per distinct image ID; the first (in order) covers the others.

    Entries without an image ID (unknown, or unresolved) are always scanned themselves.
    """
    first: dict[str, int] = {}
    out: list[Entry] = []
    covers: dict[int, list[Entry]] = {}
    for e in entries:
        if e.image_id and e.error is None:
            i = first.get(e.image_id)
            if i is not None:
                covers.setdefault(i, []).append(e)
                continue
            first[e.image_id] = len(out)
        out.append(e)
    return [
        Entry(e.target, e.image, e.image_id, e.error, tuple(covers.get(i, ())))
        if i in covers
        else e
        for i, e in enumerate(out)
    ]


def covers_map(run_id: str, entries: Iterable[Entry]) -> dict[str, list[dict[str, Any]]]:
    """scan_id of a covering entry → the covered entries, as JSON-ready dicts."""
    return {
        scan_id_for(run_id, e.target): [c.to_dict() for c in e.covers] for e in entries if e.covers
    }
