"""Exec-JSON reports: which controls count, their status, severity, and the counts.

Implements THRESHOLDS.md ("Which controls count", "Status of a control", "Severity of a
control", "Compliance"), which follows the MITRE SAF CLI and Heimdall. Pure domain: the only
I/O is `load_report` reading the file its caller names. Error messages never carry the
report itself, only where in it the problem is.

`load_report` reads at most `max_bytes` (SCANFLEET_REPORT_MAX_BYTES) and refuses JSON nested
deeper than `MAX_DEPTH` before parsing it (a report nested 100,000 deep raised RecursionError
out of json), both as InvalidReport: the report comes from the auditor, which runs the
profile's code, so its size and shape are an attacker's choice.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any

from scanfleet.core.errors import InvalidReport
from scanfleet.core.settings import DEFAULT_REPORT_MAX_BYTES

STATUSES = ("passed", "failed", "skipped", "no_impact", "error")
SEVERITIES = ("critical", "high", "medium", "low", "none")
_DEFAULT_IMPACT = 0.5  # what InSpec writes for a control that sets no impact
DEFAULT_MAX_BYTES = DEFAULT_REPORT_MAX_BYTES
"""Largest report read by default: 256 MiB (SCANFLEET_REPORT_MAX_BYTES)."""
MAX_DEPTH = 256
"""Deepest nesting of JSON arrays and objects accepted; InSpec's own reports nest about 10
deep (profiles, controls, results, plus the values of inputs and tags)."""
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_STEP = [0] * 256
for _c in b"[{":
    _STEP[_c] = 1
for _c in b"]}":
    _STEP[_c] = -1


@dataclass(frozen=True)
class Control:
    id: str
    title: str | None
    status: str
    severity: str
    impact: float
    message: str | None = field(default=None, compare=False)
    """A failed control's first failing result: its `message`, else its `code_desc`."""
    fix: str | None = field(default=None, compare=False)
    """The profile's fix text (`descriptions` label `fix`, else `check`), when it has one."""


@dataclass
class _Raw:
    """One control as found in one profile of the report."""

    id: str
    title: str | None
    impact: float
    tags: Mapping[str, Any]
    results: list[Mapping[str, Any]]
    waived: bool
    extends_from: _Raw | None = None  # the same control in the profile this one extends
    extended: bool = False  # some control in a parent profile extends this one
    descriptions: object = None  # the control's `descriptions`, read only for `fix_text`


_Profile = tuple[str | None, str | None, list[_Raw]]  # name, parent_profile, controls


def _where(profile: int, name: object, control: int | None = None) -> str:
    where = f"profile #{profile} ({name!r})" if isinstance(name, str) else f"profile #{profile}"
    return where if control is None else f"control #{control} of {where}"


def _raw_control(obj: object, where: str) -> _Raw:
    if not isinstance(obj, dict):
        raise InvalidReport(f"invalid exec-JSON report: {where} is not an object")
    cid = obj.get("id")
    if not isinstance(cid, str) or not cid:
        raise InvalidReport(f"invalid exec-JSON report: {where} has no id")
    impact = obj.get("impact", _DEFAULT_IMPACT)
    if impact is None:
        impact = _DEFAULT_IMPACT
    if isinstance(impact, bool) or not isinstance(impact, int | float):
        raise InvalidReport(f"invalid exec-JSON report: control {cid!r} has a non-numeric impact")
    results = obj.get("results", [])
    results = [] if results is None else results
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise InvalidReport(f"invalid exec-JSON report: control {cid!r} has malformed results")
    tags = obj.get("tags", {})
    tags = {} if tags is None else tags
    if not isinstance(tags, dict):
        raise InvalidReport(f"invalid exec-JSON report: control {cid!r} has malformed tags")
    waiver = obj.get("waiver_data") or {}
    skipped = waiver.get("skipped_due_to_waiver") if isinstance(waiver, dict) else None
    waived = skipped is True or (isinstance(skipped, str) and skipped.lower() == "true")
    title = obj.get("title")
    return _Raw(
        cid,
        title if isinstance(title, str) else None,
        float(impact),
        tags,
        results,
        waived,
        descriptions=obj.get("descriptions"),
    )


def _profiles(data: object) -> list[_Profile]:
    if not isinstance(data, dict):
        raise InvalidReport("invalid exec-JSON report: the top level is not an object")
    profiles = data.get("profiles")
    if not isinstance(profiles, list):
        raise InvalidReport("invalid exec-JSON report: no 'profiles' list")
    out: list[_Profile] = []
    for i, prof in enumerate(profiles):
        if not isinstance(prof, dict):
            raise InvalidReport(f"invalid exec-JSON report: {_where(i, None)} is not an object")
        name, parent = prof.get("name"), prof.get("parent_profile")
        controls = prof.get("controls", [])
        if not isinstance(controls, list):
            raise InvalidReport(f"invalid exec-JSON report: {_where(i, name)} has no control list")
        raws = [_raw_control(c, _where(i, name, j)) for j, c in enumerate(controls)]
        out.append(
            (
                name if isinstance(name, str) else None,
                parent if isinstance(parent, str) and parent else None,
                raws,
            )
        )
    return out


def _broken(index: int, parents: list[int | None], has_parent: list[bool]) -> bool:
    """A profile's parent link is broken when it names no profile or loops back to it."""
    if not has_parent[index]:
        return False
    seen: set[int] = set()
    cur = parents[index]
    while cur is not None and cur not in seen:
        if cur == index:
            return True
        seen.add(cur)
        cur = parents[cur]
    return parents[index] is None


def _link(profiles: list[_Profile]) -> set[str]:
    """Link controls to the ones they extend; return the ids that need the fallback."""
    by_name: dict[str, int] = {}
    for i, (name, _, _) in enumerate(profiles):
        if name is not None:
            by_name.setdefault(name, i)
    parents = [by_name.get(p) if p is not None else None for _, p, _ in profiles]
    has_parent = [p is not None for _, p, _ in profiles]
    orphan = [_broken(i, parents, has_parent) for i in range(len(profiles))]
    for i, (_, _, raws) in enumerate(profiles):
        target = parents[i]
        if orphan[i] or target is None:
            continue
        upper_by_id: dict[str, _Raw] = {}
        for raw in profiles[target][2]:
            upper_by_id.setdefault(raw.id, raw)
        for raw in raws:
            upper = upper_by_id.get(raw.id)
            if upper is not None:
                raw.extended = True
                upper.extends_from = upper.extends_from or raw
    linked_ids = {r.id for i, p in enumerate(profiles) if not orphan[i] for r in p[2]}
    orphan_ids: set[str] = set()
    for raw in (r for i, p in enumerate(profiles) if orphan[i] for r in p[2]):
        # Fold the control into the same id elsewhere, or count it once.
        raw.extended = raw.id in linked_ids or raw.id in orphan_ids
        orphan_ids.add(raw.id)
    return orphan_ids


def _independent(profiles: list[_Profile]) -> list[bool]:
    """Profiles with no parent relation: no parent_profile, and none names them as parent."""
    named = {parent for _, parent, _ in profiles if parent is not None}
    return [parent is None and (name is None or name not in named) for name, parent, _ in profiles]


def _counted(profiles: list[_Profile]) -> list[tuple[_Raw, _Raw]]:
    """(counted control, its root) pairs, in report order.

    An id in several independent profiles counts once, from the first control with that id
    that has results (THRESHOLDS.md "Which controls count"; Heimdall's inspecjs does this).
    """
    orphan_ids = _link(profiles)
    first_with_results: dict[str, _Raw] = {}
    for raw in (r for p in profiles for r in p[2] if r.results):
        first_with_results.setdefault(raw.id, raw)
    independent = _independent(profiles)
    fold = sum(independent) > 1
    folded: dict[str, int] = {}  # id -> its pair's index, for independent profiles' controls
    pairs: list[tuple[_Raw, _Raw]] = []
    for i, (_, _, raws) in enumerate(profiles):
        for raw in (r for r in raws if not r.extended):
            root, seen = raw, {id(raw)}
            while root.extends_from is not None and id(root.extends_from) not in seen:
                root = root.extends_from
                seen.add(id(root))
            if not root.results and raw.id in orphan_ids:
                root = first_with_results.get(raw.id, root)
            if fold and independent[i]:
                k = folded.setdefault(raw.id, len(pairs))
                if k < len(pairs):
                    if not pairs[k][1].results and root.results:
                        pairs[k] = (raw, root)
                    continue
            pairs.append((raw, root))
    return pairs


def _status(root: _Raw) -> str:  # noqa: PLR0911 - one return per rule reads as the spec
    """THRESHOLDS.md "Status of a control", first match wins."""
    statuses = [r.get("status") for r in root.results]
    if "error" in statuses or any(r.get("backtrace") is not None for r in root.results):
        return "error"
    if root.waived or root.impact == 0:
        return "no_impact"
    if not statuses:
        return "error"
    if "failed" in statuses:
        return "failed"
    if "passed" in statuses:
        return "passed"
    if all(s == "skipped" for s in statuses):
        return "skipped"
    return "error"


def severity_of(tags: Mapping[str, Any], impact: float) -> str:
    """THRESHOLDS.md "Severity of a control"."""
    for key in ("severityoverride", "severity"):
        value = tags.get(key)
        if isinstance(value, str) and value.strip().lower() in SEVERITIES:
            return value.strip().lower()
    if impact < 0.1:
        return "none"
    if impact < 0.4:
        return "low"
    if impact < 0.7:
        return "medium"
    if impact < 0.9:
        return "high"
    return "critical"


def _description(descriptions: object, label: str) -> str | None:
    """A control's description with `label`: exec-JSON has a [{label, data}] list, older
    reports a {label: data} object."""
    if isinstance(descriptions, Mapping):
        value = descriptions.get(label)
        return value if isinstance(value, str) and value.strip() else None
    if isinstance(descriptions, list):
        for d in descriptions:
            if isinstance(d, Mapping) and d.get("label") == label:
                data = d.get("data")
                if isinstance(data, str) and data.strip():
                    return data
    return None


def fix_text(top: _Raw, root: _Raw) -> str | None:
    """The `fix` description (else `check`) of the counted control, else of its root."""
    for label in ("fix", "check"):
        for raw in (top, root):
            text = _description(raw.descriptions, label)
            if text is not None:
                return text
    return None


def failing_message(results: Iterable[Mapping[str, Any]]) -> str | None:
    """The first failed result's `message`, else its `code_desc`."""
    for r in results:
        if r.get("status") == "failed":
            for key in ("message", "code_desc"):
                value = r.get(key)
                if isinstance(value, str) and value.strip():
                    return value
            return None
    return None


def parse_report(data: object) -> list[Control]:
    """The controls that count in an exec-JSON report, each with its status and severity;
    a failed one also with its failing result's message and its fix text."""
    controls = []
    for top, root in _counted(_profiles(data)):
        status = _status(root)
        failed = status == "failed"
        controls.append(
            Control(
                top.id,
                top.title if top.title is not None else root.title,
                status,
                severity_of(root.tags, root.impact),
                root.impact,
                message=failing_message(root.results) if failed else None,
                fix=fix_text(top, root) if failed else None,
            )
        )
    return controls


def json_depth(raw: bytes) -> int:
    """How deep arrays and objects nest in the JSON text `raw` (strings skipped), without
    parsing it: C-speed passes (regex, translate, accumulate), no recursion."""
    brackets = _STRING.sub(b"", raw).translate(None, _BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def load_report(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> list[Control]:
    """Read and parse an exec-JSON report file of at most `max_bytes` bytes, nested at most
    `MAX_DEPTH` deep. Raises InvalidReport."""
    try:
        with open(path, "rb") as fh:
            # The size first, so an oversized report costs nothing; then a bounded read,
            # as the file may be something else than a regular file.
            big = os.fstat(fh.fileno()).st_size > max_bytes
            raw = b"" if big else fh.read(max_bytes + 1)
    except OSError as e:
        raise InvalidReport(f"cannot read report {path}: {e.strerror or e}") from e
    if big or len(raw) > max_bytes:
        raise InvalidReport(
            f"report {path} is larger than {max_bytes} bytes (SCANFLEET_REPORT_MAX_BYTES)"
        )
    if (depth := json_depth(raw)) > MAX_DEPTH:
        raise InvalidReport(
            f"report {path} nests {depth} levels deep; at most {MAX_DEPTH} are accepted"
        )
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidReport(f"report {path} is not valid JSON: {e}") from e
    except RecursionError:  # cannot happen below MAX_DEPTH; never a traceback if it does
        raise InvalidReport(f"report {path} nests too deep") from None
    try:
        return parse_report(data)
    except InvalidReport as e:
        raise InvalidReport(f"{path}: {e}") from e


def compliance_of(passed: int, denominator: int) -> int:
    """round(100 * passed / denominator), half rounding up; 0 when the denominator is 0."""
    if denominator <= 0:
        return 0
    return (200 * passed + denominator) // (2 * denominator)


class Counts:
    """Controls per status and severity; sums across reports with `+` or `add`."""

    __slots__ = ("_n",)

    def __init__(self) -> None:
        self._n: dict[str, dict[str, int]] = {s: dict.fromkeys(SEVERITIES, 0) for s in STATUSES}

    @classmethod
    def from_controls(cls, controls: Iterable[Control]) -> Counts:
        counts = cls()
        for c in controls:
            counts._n[c.status][c.severity] += 1
        return counts

    @classmethod
    def from_dict(cls, data: object) -> Counts:
        """The inverse of `to_dict`; `total` is recomputed. Raises ValueError if malformed."""
        if not isinstance(data, Mapping):
            raise ValueError("counts must be an object")
        counts = cls()
        for status, buckets in data.items():
            if status not in counts._n or not isinstance(buckets, Mapping):
                raise ValueError(f"counts: unknown or malformed status {status!r}")
            for sev, n in buckets.items():
                if sev == "total":
                    continue
                if sev not in SEVERITIES or isinstance(n, bool) or not isinstance(n, int) or n < 0:
                    raise ValueError(f"counts: malformed {status}.{sev}")
                counts._n[status][sev] = n
        return counts

    def get(self, status: str, severity: str | None = None) -> int:
        """One bucket, or the status total when `severity` is None."""
        if severity is None:
            return sum(self._n[status].values())
        return self._n[status][severity]

    @property
    def total(self) -> int:
        return sum(sum(b.values()) for b in self._n.values())

    @property
    def compliance(self) -> int:
        passed = self.get("passed")
        return compliance_of(
            passed, passed + sum(self.get(s) for s in ("failed", "skipped", "error"))
        )

    def add(self, other: Counts) -> None:
        """Add `other` into this one, in place."""
        for status, buckets in other._n.items():
            mine = self._n[status]
            for sev, n in buckets.items():
                mine[sev] += n

    def __add__(self, other: object) -> Counts:
        if not isinstance(other, Counts):
            return NotImplemented
        out = Counts()
        out.add(self)
        out.add(other)
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Counts) and self._n == other._n

    __hash__ = None  # type: ignore[assignment]  # mutable (add)

    def __repr__(self) -> str:
        return f"Counts({self.to_dict()!r})"

    def to_dict(self) -> dict[str, dict[str, int]]:
        """SPEC §4 shape: {status: {total, critical, high, medium, low, none}}."""
        return {s: {"total": sum(b.values()), **b} for s, b in self._n.items()}


def control_ids(controls: Iterable[Control]) -> dict[str, dict[str, list[str]]]:
    """{status: {severity: sorted ids}} for every bucket, empty ones included."""
    ids: dict[str, dict[str, list[str]]] = {s: {v: [] for v in SEVERITIES} for s in STATUSES}
    for c in controls:
        ids[c.status][c.severity].append(c.id)
    for buckets in ids.values():
        for bucket in buckets.values():
            bucket.sort()
    return ids
