"""The sweeps file (SPEC §7): named, scheduled cluster-wide scans, validated strictly.

A sweeps file is YAML: a list of sweeps, or `{sweeps: [...]}`. Each sweep has exactly the
keys in `KEYS`; anything else — an unknown key, a cron expression croniter rejects or that
is not five fields, a missing profile, `namespaces` with `all_namespaces`, a wrong type, a
threshold file that does not load — is a `SweepsFileError` naming the file, the sweep and
the key, raised before anything is scheduled. Relative paths (inputs, thresholds) are
resolved against the sweeps file's directory, so beat and `sweeps validate` agree whatever
the working directory. Schedules are UTC and computed by croniter; never hand-parsed.

Pure domain: the only I/O is reading the files the sweeps file names. It never schedules,
starts or queues anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from croniter import CroniterBadDateError, croniter

from scanfleet.core.errors import BadInput, SweepsFileError
from scanfleet.core.targets import check_label, check_selector
from scanfleet.judging.thresholds import load_fleet_threshold, load_threshold
from scanfleet.reports.heimdall import check_heimdall_url

JANITOR_INTERVAL = 15 * 60
"""Seconds between the janitor runs beat schedules (default of `scanfleet beat`)."""
PRUNE_INTERVAL = 6 * 3600
"""Seconds between the retention runs beat schedules (default of `scanfleet beat`)."""

KEYS = (
    "name",
    "schedule",
    "contexts",
    "all_contexts",
    "namespaces",
    "all_namespaces",
    "exclude_namespaces",
    "selector",
    "profile",
    "inputs",
    "threshold",
    "fleet_threshold",
    "dedupe_images",
    "upload",
)
UPLOAD_KEYS = ("heimdall_url",)


@dataclass(frozen=True)
class Sweep:
    """One validated sweep. Paths are absolute; `schedule` is a 5-field UTC cron line."""

    name: str
    schedule: str
    profile: str
    contexts: tuple[str, ...] = ()
    """Empty with `all_contexts` false: the kubeconfig's current context."""
    all_contexts: bool = False
    namespaces: tuple[str, ...] = ()
    all_namespaces: bool = False
    exclude_namespaces: tuple[str, ...] = ()
    selector: str | None = None
    inputs: tuple[str, ...] = ()
    threshold: str | None = None
    fleet_threshold: str | None = None
    dedupe_images: bool = False
    upload: str | None = None
    """`upload: {heimdall_url: URL}`: each finished run's HDF files go to this Heimdall
    server (the workers' SCANFLEET_HEIMDALL_API_KEY[_FILE] is the key)."""

    @property
    def source(self) -> str:
        """The run's `source` field: every tick is an ordinary run marked with its sweep."""
        return f"sweep:{self.name}"

    def next_fire(self, after: datetime) -> datetime:
        """The first fire time strictly after `after` (UTC)."""
        return next_fire(self.schedule, after)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (a task argument): lists for tuples."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sweep:
        """The inverse of `to_dict`, for a sweep that was validated by `load_sweeps`."""
        d = {k: data[k] for k in KEYS if k in data}
        for k in ("contexts", "namespaces", "exclude_namespaces", "inputs"):
            d[k] = tuple(d.get(k) or ())
        return cls(**d)


def next_fire(schedule: str, after: datetime) -> datetime:
    if after.tzinfo is None:
        after = after.replace(tzinfo=UTC)
    fire: datetime = croniter(schedule, after.astimezone(UTC)).get_next(datetime)
    return fire.astimezone(UTC)


class _Checker:
    """Type checks for one sweep; every message names the file, the sweep and the key."""

    def __init__(self, source: str, name: str, base: Path) -> None:
        self.source = source
        self.name = name
        self.base = base

    def error(self, key: str, problem: str) -> SweepsFileError:
        return SweepsFileError(
            f"sweeps file {self.source!r}, sweep {self.name!r}: key {key!r}: {problem}"
        )

    def string(self, key: str, value: object) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"must be a non-empty string, got {value!r}")
        return value

    def flag(self, key: str, value: object) -> bool:
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {value!r}")
        return value

    def strings(self, key: str, value: object) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.error(key, f"must be a list of non-empty strings, got {value!r}")
        return tuple(dict.fromkeys(value))

    def labels(self, key: str, value: object) -> tuple[str, ...]:
        items = self.strings(key, value)
        for item in items:
            try:
                check_namespace(item)
            except BadInput as e:
                raise self.error(key, str(e)) from None
        return items

    def path(self, key: str, value: object) -> Path:
        p = Path(self.string(key, value)).expanduser()
        p = p if p.is_absolute() else self.base / p
        if not p.is_file():
            raise self.error(key, f"file {str(p)!r} does not exist or is not a file")
        return p.resolve()

    def upload(self, value: object) -> str:
        """`upload: {heimdall_url: URL}`: the Heimdall server's base URL, checked."""
        if not isinstance(value, Mapping) or set(value) != set(UPLOAD_KEYS):
            raise self.error("upload", f"must be a mapping with {UPLOAD_KEYS[0]!r}, got {value!r}")
        url = self.string("upload", value["heimdall_url"])
        try:
            return check_heimdall_url(url)
        except BadInput as e:
            raise self.error("upload", str(e)) from None

    def selector(self, value: object) -> str:
        text = self.string("selector", value)
        try:
            check_selector(text)
        except BadInput as e:
            raise self.error("selector", str(e)) from None
        return text

    def schedule(self, value: object) -> str:
        expr = " ".join(self.string("schedule", value).split())
        if len(expr.split(" ")) != 5:
            raise self.error(
                "schedule",
                f"{value!r} is not a 5-field cron expression "
                "(minute hour day-of-month month day-of-week, UTC)",
            )
        if not croniter.is_valid(expr):
            raise self.error("schedule", f"{value!r} is not a valid cron expression")
        try:
            next_fire(expr, datetime.now(UTC))
        except CroniterBadDateError:
            raise self.error("schedule", f"{value!r} never fires") from None
        return expr


def check_namespace(value: str) -> str:
    return check_label(value, "namespace")


def parse_sweep(raw: object, index: int, source: str, base: Path) -> Sweep:
    if not isinstance(raw, Mapping):
        raise SweepsFileError(
            f"sweeps file {source!r}, sweep #{index + 1}: must be a mapping of keys, got {raw!r}"
        )
    name_value = raw.get("name")
    label = name_value if isinstance(name_value, str) and name_value else f"#{index + 1}"
    c = _Checker(source, label, base)
    for key in raw:
        if key not in KEYS:
            raise SweepsFileError(
                f"sweeps file {source!r}, sweep {label!r}: unknown key {key!r} "
                f"(valid: {', '.join(KEYS)})"
            )
    for key in ("name", "schedule", "profile"):
        if raw.get(key) is None:
            raise c.error(key, "is required")
    try:
        name = check_label(raw["name"], "sweep name")
    except BadInput as e:
        raise c.error("name", str(e)) from None
    schedule = c.schedule(raw["schedule"])
    profile = c.string("profile", raw["profile"])

    return Sweep(
        name=name,
        schedule=schedule,
        profile=profile,
        dedupe_images=c.flag("dedupe_images", raw.get("dedupe_images", False)),
        upload=c.upload(raw["upload"]) if raw.get("upload") is not None else None,
        **_scope(c, raw),
        **_files(c, raw),
    )


def _scope(c: _Checker, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Which clusters, namespaces and pods: contexts, namespaces, exclusions, selector."""
    contexts = c.strings("contexts", raw["contexts"]) if "contexts" in raw else ()
    all_contexts = c.flag("all_contexts", raw.get("all_contexts", False))
    if contexts and all_contexts:
        raise c.error("all_contexts", "conflicts with 'contexts': give one or the other")
    if "contexts" in raw and not contexts:
        raise c.error("contexts", "is empty; omit it for the current context")
    namespaces = c.labels("namespaces", raw["namespaces"]) if "namespaces" in raw else ()
    all_namespaces = c.flag("all_namespaces", raw.get("all_namespaces", False))
    if "namespaces" in raw and "all_namespaces" in raw and (namespaces or all_namespaces):
        raise c.error("all_namespaces", "conflicts with 'namespaces': give one or the other")
    if not namespaces and not all_namespaces:
        raise c.error("namespaces", "is required: list namespaces, or set all_namespaces: true")
    return {
        "contexts": contexts,
        "all_contexts": all_contexts,
        "namespaces": namespaces,
        "all_namespaces": all_namespaces,
        "exclude_namespaces": (
            c.labels("exclude_namespaces", raw["exclude_namespaces"])
            if "exclude_namespaces" in raw
            else ()
        ),
        "selector": c.selector(raw["selector"]) if "selector" in raw else None,
    }


def _files(c: _Checker, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Input files must exist; threshold files must load as scan and fleet would load them."""
    out: dict[str, Any] = {"inputs": (), "threshold": None, "fleet_threshold": None}
    if "inputs" in raw:
        paths = c.strings("inputs", raw["inputs"])
        out["inputs"] = tuple(str(c.path("inputs", p)) for p in paths)
    loaders = {"threshold": load_threshold, "fleet_threshold": load_fleet_threshold}
    for key, load in loaders.items():
        if raw.get(key) is None:
            continue
        p = c.path(key, raw[key])
        try:
            load(p)
        except BadInput as e:
            raise c.error(key, str(e)) from None
        out[key] = str(p)
    return out


def parse_sweeps(data: object, source: str, base: Path) -> list[Sweep]:
    """Sweeps from already-loaded YAML; `base` resolves relative paths."""
    if isinstance(data, Mapping):
        extra = [k for k in data if k != "sweeps"]
        if extra:
            raise SweepsFileError(
                f"sweeps file {source!r}: unknown top-level key {extra[0]!r} (valid: sweeps)"
            )
        data = data.get("sweeps")
    if not isinstance(data, list):
        raise SweepsFileError(
            f"sweeps file {source!r}: must be a list of sweeps, or a mapping with 'sweeps:'"
        )
    if not data:
        raise SweepsFileError(f"sweeps file {source!r}: has no sweeps")
    sweeps: list[Sweep] = []
    seen: set[str] = set()
    for i, raw in enumerate(data):
        sweep = parse_sweep(raw, i, source, base)
        if sweep.name in seen:
            raise SweepsFileError(
                f"sweeps file {source!r}, sweep {sweep.name!r}: key 'name': "
                "duplicate sweep name; names must be unique"
            )
        seen.add(sweep.name)
        sweeps.append(sweep)
    return sweeps


def load_sweeps(path: str | Path) -> list[Sweep]:
    """Read and validate a sweeps file; `SweepsFileError` on any problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SweepsFileError(f"cannot read sweeps file {str(p)!r}: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SweepsFileError(f"sweeps file {str(p)!r}: not valid YAML: {e}") from None
    return parse_sweeps(data, str(p), p.resolve().parent)
