"""Threshold files: parsed strictly up front, then judged against counts.

The target threshold format is THRESHOLDS.md's (the SAF CLI's, nested, flat or both, with
scanfleet's differences: every key honoured, every failure reported, bad files rejected).
The fleet threshold (SPEC.md §6) wraps one under `fleet:` and bounds numbers of targets
under `targets:`. Pure domain: the only I/O is reading the file the caller names. A bad file
is a ThresholdFileError naming the file, the key and the value, raised before any scan.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from scanfleet.core.errors import ThresholdFileError
from scanfleet.judging.report import SEVERITIES, STATUSES, Counts, compliance_of

Bound = tuple[float | None, float | None]  # (min, max)
_Leaf = tuple[tuple[str, ...], object]  # key parts as written, value
_MAX_IDS_SHOWN = 10
_KEY_FORMS = (
    "compliance.min|max, <status>.total, <status>.total.min|max, <status>.<sev>.min|max, "
    "<status>.<sev>.controls"
)
TARGET_KINDS = ("passed", "failed", "error", "compliance")
_TARGET_WORDS = {
    "passed": "{n} target{s} met their threshold",
    "failed": "{n} target{s} failed their threshold",
    "error": "{n} target{s} could not be scanned",
    "compliance": "{n}% of completed targets met their threshold",
}


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _bound_failures(key: str, actual: int, bound: Bound, what: str, unit: str = "") -> list[str]:
    lo, hi = bound
    out = []
    if lo is not None and actual < lo:
        out.append(f"{key}.min: {what}, at least {_num(lo)}{unit} required")
    if hi is not None and actual > hi:
        out.append(f"{key}.max: {what}, at most {_num(hi)}{unit} allowed")
    return out


def _bucket_ids(
    ids: Mapping[str, Mapping[str, Iterable[str]]] | None, status: str, sev: str
) -> set[str]:
    by_sev = ids.get(status) if ids is not None else None
    return set(by_sev.get(sev, ())) if by_sev is not None else set()


def _controls_word(n: int, status: str, sev: str = "") -> str:
    return f"{n} {status} {sev + ' ' if sev else ''}control{'' if n == 1 else 's'}"


def _listed(ids: Iterable[str]) -> str:
    ids = sorted(ids)
    shown = ", ".join(ids[:_MAX_IDS_SHOWN])
    more = len(ids) - _MAX_IDS_SHOWN
    return shown + (f" (and {more} more)" if more > 0 else "")


@dataclass(frozen=True)
class Threshold:
    """A parsed target threshold. `prefix` ("fleet.") is put before keys in messages."""

    source: str
    compliance: Bound = (None, None)
    limits: Mapping[tuple[str, str], Bound] = field(default_factory=dict)  # (status, sev|total)
    exact_totals: Mapping[str, int] = field(default_factory=dict)
    controls: Mapping[tuple[str, str], frozenset[str]] = field(default_factory=dict)
    prefix: str = ""

    def evaluate(
        self, counts: Counts, ids: Mapping[str, Mapping[str, Iterable[str]]] | None = None
    ) -> list[str]:
        """Every failed check, in a stable order; empty when the threshold is met."""
        p = self.prefix
        comp = counts.compliance
        out = _bound_failures(f"{p}compliance", comp, self.compliance, f"compliance {comp}%", "%")
        for status in STATUSES:
            total = counts.get(status)
            exact = self.exact_totals.get(status)
            if exact is not None and total != exact:
                out.append(
                    f"{p}{status}.total: {_controls_word(total, status)}, exactly {exact} required"
                )
            for bucket in ("total", *SEVERITIES):
                bound = self.limits.get((status, bucket))
                if bound is not None:
                    n = total if bucket == "total" else counts.get(status, bucket)
                    sev = "" if bucket == "total" else bucket
                    what = _controls_word(n, status, sev)
                    out += _bound_failures(f"{p}{status}.{bucket}", n, bound, what)
            for sev in SEVERITIES:
                expected = self.controls.get((status, sev))
                if expected is not None:
                    actual = _bucket_ids(ids, status, sev)
                    out += self._ids_failure(f"{p}{status}.{sev}.controls", actual, expected)
        return out

    @staticmethod
    def _ids_failure(key: str, actual: set[str], expected: frozenset[str]) -> list[str]:
        if actual == expected:
            return []
        parts = []
        if expected - actual:
            parts.append(f"missing {_listed(expected - actual)}")
        if actual - expected:
            parts.append(f"unexpected {_listed(actual - expected)}")
        n = len(actual)
        head = f"{key}: {n} id{'' if n == 1 else 's'}, expected exactly {len(expected)}; "
        return [head + "; ".join(parts)]


def _flatten(
    data: Mapping[object, object], source: str, path: tuple[str, ...] = ()
) -> Iterator[_Leaf]:
    for key, value in data.items():
        if not isinstance(key, str) or not key or "" in key.split("."):
            where = ".".join(path) or "the top level"
            raise ThresholdFileError(f"{source}: invalid key {key!r} under {where}")
        parts = (*path, *key.split("."))
        if isinstance(value, Mapping):
            yield from _flatten(value, source, parts)
        else:
            yield parts, value


def _bound_value(source: str, key: str, value: object, percent: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ThresholdFileError(f"{source}: {key}: must be a number, got {value!r}")
    if value < 0 or (percent and value > 100):
        limit = "between 0 and 100" if percent else "0 or more"
        raise ThresholdFileError(f"{source}: {key}: must be {limit}, got {value!r}")
    return value


class _Builder:
    """Collects leaves into bounds, rejecting unknown keys, bad values and conflicts."""

    def __init__(self, source: str, prefix: str = "") -> None:
        self.source = source
        self.prefix = prefix  # "fleet." for the fleet section: messages name the whole key
        self.bounds: dict[tuple[str, str], list[float | None]] = {}
        self.written: dict[tuple[str, str], str] = {}
        self.exact: dict[str, int] = {}
        self.controls: dict[tuple[str, str], frozenset[str]] = {}

    def _set_bound(self, key: str, where: tuple[str, str], side: str, value: float) -> None:
        pair = self.bounds.setdefault(where, [None, None])
        i = 0 if side == "min" else 1
        if pair[i] is not None and pair[i] != value:
            raise ThresholdFileError(
                f"{self.source}: {key}: given twice with different values "
                f"({_num(pair[i] or 0)} and {_num(value)})"
            )
        pair[i] = value
        self.written[where] = key.rsplit(".", 1)[0]

    def add(self, parts: tuple[str, ...], value: object) -> None:
        key = self.prefix + ".".join(parts)
        n = tuple(p.lower() for p in parts)
        if n[:1] == ("compliance",) and len(n) == 2 and n[1] in ("min", "max"):
            self._set_bound(
                key, ("compliance", ""), n[1], _bound_value(self.source, key, value, True)
            )
        elif len(n) == 2 and n[0] in STATUSES and n[1] == "total":
            count = _bound_value(self.source, key, value, False)
            if not float(count).is_integer():
                raise ThresholdFileError(
                    f"{self.source}: {key}: must be a whole number, got {value!r}"
                )
            if self.exact.setdefault(n[0], int(count)) != count:
                raise ThresholdFileError(f"{self.source}: {key}: given twice with different values")
        elif (
            len(n) == 3
            and n[0] in STATUSES
            and n[1] in ("total", *SEVERITIES)
            and n[2] in ("min", "max")
        ):
            self._set_bound(key, (n[0], n[1]), n[2], _bound_value(self.source, key, value, False))
        elif len(n) == 3 and n[0] in STATUSES and n[1] in SEVERITIES and n[2] == "controls":
            # `failed.high.controls` and `failed.High.controls` name one bucket: join them.
            ids = self._ids(key, value)
            self.controls[(n[0], n[1])] = self.controls.get((n[0], n[1]), frozenset()) | ids
        else:
            raise ThresholdFileError(f"{self.source}: unknown key {key!r} (valid: {_KEY_FORMS})")

    def _ids(self, key: str, value: object) -> frozenset[str]:
        if not isinstance(value, list) or any(
            isinstance(v, bool) or not isinstance(v, str | int | float) for v in value
        ):
            raise ThresholdFileError(
                f"{self.source}: {key}: must be a list of control ids, got {value!r}"
            )
        return frozenset(str(v) for v in value)

    def build(self) -> Threshold:
        for where, (lo, hi) in self.bounds.items():
            if lo is not None and hi is not None and lo > hi:
                raise ThresholdFileError(
                    f"{self.source}: {self.written[where]}: "
                    f"min {_num(lo)} is greater than max {_num(hi)}"
                )
        for status, n in self.exact.items():
            lo, hi = self.bounds.get((status, "total"), [None, None])
            if (lo is not None and n < lo) or (hi is not None and n > hi):
                raise ThresholdFileError(
                    f"{self.source}: {self.prefix}{status}.total: {n} is outside "
                    f"{self.prefix}{status}.total.min/max"
                )
        limits = {k: (v[0], v[1]) for k, v in self.bounds.items() if k[0] != "compliance"}
        comp = self.bounds.get(("compliance", ""), [None, None])
        return Threshold(
            self.source,
            (comp[0], comp[1]),
            MappingProxyType(limits),
            MappingProxyType(dict(self.exact)),
            MappingProxyType(dict(self.controls)),
            self.prefix,
        )


def _read_yaml(path: str | Path) -> object:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ThresholdFileError(f"cannot read threshold file {path}: {e}") from e
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ThresholdFileError(f"{path}: not valid YAML: {e}") from e


def _leaves(data: object, source: str) -> list[_Leaf]:
    if data is None:
        raise ThresholdFileError(f"{source}: threshold file is empty")
    if not isinstance(data, Mapping):
        raise ThresholdFileError(f"{source}: threshold file must be a mapping of keys")
    leaves = list(_flatten(data, source))
    if not leaves:
        raise ThresholdFileError(f"{source}: threshold file is empty")
    return leaves


def parse_threshold(data: object, source: str) -> Threshold:
    """A Threshold from already-loaded YAML (`source` names the file in messages)."""
    builder = _Builder(source)
    for parts, value in _leaves(data, source):
        builder.add(parts, value)
    return builder.build()


def load_threshold(path: str | Path) -> Threshold:
    return parse_threshold(_read_yaml(path), str(path))


@dataclass(frozen=True)
class FleetThreshold:
    """SPEC.md §6: `fleet:` judges the summed counts, `targets:` bounds numbers of targets."""

    source: str
    fleet: Threshold | None = None
    targets: Mapping[str, Bound] = field(default_factory=dict)  # TARGET_KINDS -> (min, max)

    @property
    def bounds_errors(self) -> bool:
        """True when `targets.error` is bounded: scan errors are then judged here (SPEC §5)."""
        return "error" in self.targets

    def evaluate(
        self,
        counts: Counts,
        ids: Mapping[str, Mapping[str, Iterable[str]]] | None,
        targets: Mapping[str, int],
    ) -> list[str]:
        """Every failed check. `targets` has total, completed, error, passed, failed."""
        out = self.fleet.evaluate(counts, ids) if self.fleet is not None else []
        for kind in TARGET_KINDS:
            bound = self.targets.get(kind)
            if bound is None:
                continue
            if kind == "compliance":
                n = compliance_of(targets.get("passed", 0), targets.get("completed", 0))
                unit = "%"
            else:
                n, unit = targets.get(kind, 0), ""
            what = _TARGET_WORDS[kind].format(n=n, s="" if n == 1 else "s")
            out += _bound_failures(f"targets.{kind}", n, bound, what, unit)
        return out


def parse_fleet_threshold(data: object, source: str) -> FleetThreshold:
    """A FleetThreshold from already-loaded YAML, as strict as a target threshold."""
    fleet = _Builder(source, "fleet.")
    has_fleet = False
    targets: dict[str, list[float | None]] = {}
    for parts, value in _leaves(data, source):
        key = ".".join(parts)
        n = tuple(p.lower() for p in parts)
        if n[0] == "fleet" and len(n) > 1:
            fleet.add(parts[1:], value)
            has_fleet = True
        elif n[0] == "targets" and len(n) == 3 and n[1] in TARGET_KINDS and n[2] in ("min", "max"):
            pair = targets.setdefault(n[1], [None, None])
            side = 0 if n[2] == "min" else 1
            bound = _bound_value(source, key, value, n[1] == "compliance")
            if pair[side] is not None and pair[side] != bound:
                raise ThresholdFileError(f"{source}: {key}: given twice with different values")
            pair[side] = bound
        elif n[0] == "targets":
            raise ThresholdFileError(
                f"{source}: unknown key {key!r} (valid: targets.passed|failed|error|compliance"
                ".min|max)"
            )
        else:
            raise ThresholdFileError(f"{source}: unknown key {key!r} (valid: fleet, targets)")
    for kind, (lo, hi) in targets.items():
        if lo is not None and hi is not None and lo > hi:
            raise ThresholdFileError(
                f"{source}: targets.{kind}: min {_num(lo)} is greater than max {_num(hi)}"
            )
    return FleetThreshold(
        source,
        fleet.build() if has_fleet else None,
        MappingProxyType({k: (v[0], v[1]) for k, v in targets.items()}),
    )


def load_fleet_threshold(path: str | Path) -> FleetThreshold:
    return parse_fleet_threshold(_read_yaml(path), str(path))


def threshold_document(path: Path | None, fleet: bool = False) -> dict[str, Any] | None:
    """Load and strictly validate a threshold file; return its parsed document.

    Runs carry the document, not the path, so a worker on another host can judge.
    """
    if path is None:
        return None
    (load_fleet_threshold if fleet else load_threshold)(path)  # raises ThresholdFileError
    doc = _read_yaml(path)
    if not isinstance(doc, dict):
        raise ThresholdFileError(f"threshold file {str(path)!r} must be a mapping")
    return doc
