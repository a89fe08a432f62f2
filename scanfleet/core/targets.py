"""Targets: what to scan, parsed and validated before anything is created or queued.

A target is `(context, namespace, pod, container)`. `container` may be None on input,
meaning "every regular container of the pod", resolved later against the API (`PodInfo`,
`ContainerInfo`: what the Kubernetes adapter reports about a pod). Pure domain: no I/O
except reading a targets file the user named.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scanfleet.core.errors import BadInput

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
TARGET_KEYS = ("context", "namespace", "pod", "container")


def check_label(value: object, what: str) -> str:
    """A DNS-1123 label: lower-case alphanumerics and '-', at most 63 characters."""
    if not isinstance(value, str) or len(value) > 63 or not _DNS1123_LABEL.fullmatch(value):
        raise BadInput(
            f"invalid {what} {value!r}: must be a DNS-1123 label "
            "(lower-case letters, digits and '-', starting and ending alphanumeric, at most 63)"
        )
    return value


def check_subdomain(value: object, what: str) -> str:
    """A DNS-1123 subdomain: dot-separated labels, at most 253 characters."""
    if not isinstance(value, str) or len(value) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(value):
        raise BadInput(
            f"invalid {what} {value!r}: must be a DNS-1123 subdomain "
            "(lower-case letters, digits, '-' and '.', at most 253)"
        )
    return value


@dataclass(frozen=True, order=True)
class Target:
    context: str
    namespace: str
    pod: str
    container: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.context, str) or not self.context:
            raise BadInput(f"invalid context {self.context!r}: must be a non-empty name")
        check_label(self.namespace, "namespace")
        check_subdomain(self.pod, "pod name")
        if self.container is not None:
            check_label(self.container, "container name")

    @property
    def ref(self) -> str:
        """`namespace/pod/container` (or `namespace/pod` when unresolved)."""
        parts = [self.namespace, self.pod] + ([self.container] if self.container else [])
        return "/".join(parts)

    def with_container(self, container: str) -> Target:
        return Target(self.context, self.namespace, self.pod, container)

    def to_dict(self) -> dict[str, Any]:
        return {
            "context": self.context,
            "namespace": self.namespace,
            "pod": self.pod,
            "container": self.container,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Target:
        return cls(data["context"], data["namespace"], data["pod"], data.get("container"))


def parse_target(text: str, context: str) -> Target:
    """Parse `NAMESPACE/POD[/CONTAINER]` from the command line."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise BadInput(f"invalid target {text!r}: expected NAMESPACE/POD[/CONTAINER]")
    return Target(context, *parts)


def load_targets_file(path: Path, default_context: str | None) -> list[Target]:
    """A YAML or JSON list of objects with keys context, namespace, pod, container.

    `context` may be omitted when a default context is known; `container` may be omitted to
    mean every regular container of the pod.
    """
    try:
        text = path.read_text()
    except OSError as e:
        raise BadInput(f"cannot read targets file {str(path)!r}: {e.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise BadInput(f"targets file {str(path)!r} is not valid YAML/JSON: {e}") from None
    if isinstance(data, Mapping) and "targets" in data:
        data = data["targets"]
    if not isinstance(data, list):
        raise BadInput(f"targets file {str(path)!r} must hold a list of targets")
    targets = []
    for i, item in enumerate(data):
        where = f"targets file {str(path)!r}, entry {i}"
        if not isinstance(item, Mapping):
            raise BadInput(f"{where}: expected an object with keys {', '.join(TARGET_KEYS)}")
        unknown = sorted(set(item) - set(TARGET_KEYS))
        if unknown:
            raise BadInput(f"{where}: unknown key {unknown[0]!r}")
        missing = [k for k in ("namespace", "pod") if k not in item]
        if missing:
            raise BadInput(f"{where}: missing key {missing[0]!r}")
        context = item.get("context") or default_context
        if not context:
            raise BadInput(f"{where}: no context given and no current context to default to")
        try:
            targets.append(Target(context, item["namespace"], item["pod"], item.get("container")))
        except BadInput as e:
            raise BadInput(f"{where}: {e}") from None
    return targets


def scan_id_for(run_id: str, target: Target) -> str:
    """Stable scan id for (run, target), so a redelivered task reuses it.

    16 hex digits: short enough for `scanfleet-<id>` to be a valid object name, long enough
    that collisions within a run do not happen in practice.
    """
    key = "\0".join([run_id, target.context, target.namespace, target.pod, target.container or ""])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


# Label selector syntax (k8s.io/apimachinery/pkg/labels): requirements separated by commas;
# each `key`, `!key`, `key=v`, `key==v`, `key!=v`, `key in (a,b)`, `key notin (a,b)`.
_NAME = r"([a-z0-9A-Z]([-_.a-z0-9A-Z]{0,61}[a-z0-9A-Z])?)"
_PREFIX = r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)"
_KEY = rf"{_PREFIX}?{_NAME}"
_VALUE = rf"({_NAME})?"
_REQUIREMENT = re.compile(
    rf"^\s*(!\s*{_KEY}|{_KEY}\s*(==?|!=)\s*{_VALUE}|{_KEY}\s+(in|notin)\s*\(\s*"
    rf"{_VALUE}(\s*,\s*{_VALUE})*\s*\)|{_KEY})\s*$"
)


def check_selector(selector: str | None) -> str | None:
    """Reject a label selector the API server would reject, before anything is queued."""
    if selector is None or not selector.strip():
        return None
    for req in _split_requirements(selector):
        if not _REQUIREMENT.fullmatch(req):
            raise BadInput(
                f"invalid label selector {selector!r}: cannot parse requirement {req.strip()!r}"
            )
    return selector


def _split_requirements(selector: str) -> list[str]:
    """Split on commas that are not inside a `(...)` value set."""
    out: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    if depth != 0:
        raise BadInput(f"invalid label selector {selector!r}: unbalanced parentheses")
    return out


@dataclass(frozen=True)
class ContainerInfo:
    name: str
    image: str | None
    image_id: str | None


@dataclass(frozen=True)
class PodInfo:
    namespace: str
    name: str
    phase: str | None
    containers: tuple[ContainerInfo, ...]
    """Regular containers only: never init or ephemeral containers."""
    labels: Mapping[str, str] = field(default_factory=dict)
    uid: str | None = None
    """metadata.uid: a pod re-created under the same name has another."""

    def container(self, name: str) -> ContainerInfo | None:
        return next((c for c in self.containers if c.name == name), None)


def pod_info(pod: Mapping[str, Any]) -> PodInfo:
    """A pod's facts from its JSON document (regular containers only)."""
    meta, spec, st = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    statuses = {s.get("name"): s for s in st.get("containerStatuses") or []}
    containers = []
    for c in spec.get("containers") or []:
        s = statuses.get(c.get("name")) or {}
        containers.append(
            ContainerInfo(
                name=c.get("name", ""),
                image=s.get("image") or c.get("image"),
                image_id=s.get("imageID") or None,
            )
        )
    return PodInfo(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        phase=st.get("phase"),
        containers=tuple(containers),
        labels=dict(meta.get("labels") or {}),
        uid=meta.get("uid"),
    )
