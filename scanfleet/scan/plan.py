"""The run plan: what every target of one run is scanned and judged with.

Owns `RunPlan` (plain JSON in Redis, `summaries.PlanDocument`: contexts by name, the
threshold as its parsed document, never a credential: a profile URL's user:password is
kept in memory only, `profile_url`) and the `ScanOptions` derived from it.
Threshold files are read and validated once in `RunPlan.new`; a plan's threshold and fleet
threshold are parsed once per plan (`cached_property`), never once per target: a worker
pins a URL profile before each scan with `pinned`, which keeps the parsed thresholds.

Pure apart from checking that the named input and threshold files exist; never talks to
Kubernetes, Redis or Celery.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, cast

from scanfleet.core.clock import iso
from scanfleet.core.errors import BadInput
from scanfleet.core.logs import remember_url
from scanfleet.core.policy import (
    DEFAULT_ALLOWED_PROFILES,
    check_auditor_args,
    check_profile,
    safe_url,
)
from scanfleet.judging.documents import PlanDocument
from scanfleet.judging.thresholds import (
    FleetThreshold,
    Threshold,
    parse_fleet_threshold,
    parse_threshold,
    threshold_document,
)


def new_run_id(now: datetime) -> str:
    """`YYYYMMDDTHHMMSSZ-<6 hex>`: sorts by time, unique enough across producers."""
    return f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class ScanOptions:
    """How to scan: the same for every target of a run."""

    profile: str
    threshold: Threshold | None = None
    input_files: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()
    token_ttl: int = 3600
    timeout: float = 1800
    auditor: str = "cinc-auditor"
    kill_grace: float = 10.0
    profile_sha256: str | None = None
    """The sha256 of the archive the auditor gets (a URL profile; profiles.py)."""


@dataclass(frozen=True)
class RunPlan:
    """Everything a worker needs to scan a target of this run. JSON-serialisable."""

    run_id: str
    source: str
    profile: str
    created_at: str
    threshold: Mapping[str, Any] | None = None
    threshold_source: str = "threshold"
    fleet_threshold: Mapping[str, Any] | None = None
    fleet_threshold_source: str = "fleet threshold"
    input_files: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()
    token_ttl: int = 3600
    timeout: float = 1800
    auditor: str = "cinc-auditor"
    dedupe_images: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)
    profile_url: str | None = field(default=None, repr=False, compare=False)
    """The profile URL with its credentials (user:password@), in memory only: `profile`
    is the URL without them, and only `profile` is serialised (Redis, run.json). A worker
    takes credentials from its own allow-list instead (policy.credentialed)."""
    profile_sha256: str | None = None
    """A URL profile's pinned sha256: set by `scan`/`submit --local` when they fetch it, and
    in Redis by the first worker that fetches it (first writer wins; profiles.py)."""
    profile_path: str | None = field(default=None, repr=False, compare=False)
    """The fetched archive the auditor gets instead of the URL, in memory only."""

    @classmethod
    def new(
        cls,
        *,
        source: str,
        profile: str,
        now: datetime,
        auditor: str,
        token_ttl: int,
        timeout: float,
        threshold: Path | None = None,
        fleet_threshold: Path | None = None,
        input_files: Sequence[str | Path] = (),
        extra_args: Sequence[str] = (),
        dedupe_images: bool = False,
        allowed_profiles: Sequence[str] = DEFAULT_ALLOWED_PROFILES,
    ) -> RunPlan:
        """A new run's plan, validated: threshold files strictly, input files exist, the
        profile and extra auditor arguments pass the policy (policy.py).

        Raises BadInput (ThresholdFileError, PolicyViolation) before anything is created
        or queued.
        """
        profile = check_profile(profile, allowed_profiles)  # a URL in canonical form
        check_auditor_args(extra_args)
        shown = safe_url(profile)
        if shown != profile:
            remember_url(profile)
        for f in input_files:
            if not Path(f).is_file():
                raise BadInput(f"input file {str(f)!r} does not exist or is not a file")
        plan = cls(
            run_id=new_run_id(now),
            source=source,
            profile=shown,
            profile_url=profile if shown != profile else None,
            created_at=iso(now),
            threshold=threshold_document(threshold),
            threshold_source=str(threshold) if threshold else "threshold",
            fleet_threshold=threshold_document(fleet_threshold, fleet=True),
            fleet_threshold_source=str(fleet_threshold) if fleet_threshold else "fleet threshold",
            input_files=tuple(str(Path(f).resolve()) for f in input_files),
            extra_args=tuple(extra_args),
            token_ttl=token_ttl,
            timeout=timeout,
            auditor=auditor,
            dedupe_images=dedupe_images,
        )
        _ = plan.scan_options, plan.fleet  # parse now: BadInput before anything is created
        return plan

    def to_dict(self) -> PlanDocument:
        """The plan as Redis stores it: every field but the in-memory-only `profile_url`
        and `profile_path` (tests/unit/scan/test_plan.py holds the two in step)."""
        d = asdict(self)
        d.pop("profile_url")
        d.pop("profile_path")
        d["input_files"] = list(self.input_files)
        d["extra_args"] = list(self.extra_args)
        return cast(PlanDocument, d)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunPlan:
        d = dict(data)
        d.pop("profile_url", None)
        d.pop("profile_path", None)
        d["input_files"] = tuple(d.get("input_files", ()))
        d["extra_args"] = tuple(d.get("extra_args", ()))
        return cls(**d)

    def pinned(self, profile_sha256: str, profile_path: str) -> RunPlan:
        """This plan with its profile pinned to a fetched archive; the thresholds already
        parsed are kept (`dataclasses.replace` alone would parse them again)."""
        plan = replace(self, profile_sha256=profile_sha256, profile_path=profile_path)
        for parsed in ("_threshold", "fleet"):
            if parsed in self.__dict__:
                plan.__dict__[parsed] = self.__dict__[parsed]
        return plan

    @cached_property
    def _threshold(self) -> Threshold | None:
        """The threshold document, parsed once per plan (and kept by `pinned`)."""
        if self.threshold is None:
            return None
        return parse_threshold(self.threshold, self.threshold_source)

    @cached_property
    def scan_options(self) -> ScanOptions:
        """How to scan each target (the threshold parsed once, `_threshold`)."""
        return ScanOptions(
            profile=self.profile_path or self.profile_url or self.profile,
            profile_sha256=self.profile_sha256,
            threshold=self._threshold,
            input_files=self.input_files,
            extra_args=self.extra_args,
            token_ttl=self.token_ttl,
            timeout=self.timeout,
            auditor=self.auditor,
        )

    @cached_property
    def fleet(self) -> FleetThreshold | None:
        """The fleet threshold, parsed once per plan (and kept by `pinned`)."""
        if self.fleet_threshold is None:
            return None
        return parse_fleet_threshold(self.fleet_threshold, self.fleet_threshold_source)
