"""The run plan parses its thresholds once, not once per target."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import scanfleet.scan.plan as plan_module
from scanfleet.judging.thresholds import Threshold, parse_fleet_threshold, parse_threshold
from scanfleet.scan.plan import RunPlan


def test_thresholds_are_parsed_once_per_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    th = tmp_path / "th.yml"
    th.write_text("compliance.min: 50\n")
    plan = RunPlan.new(
        source="scan",
        profile="p",
        now=datetime(2026, 1, 1, tzinfo=UTC),
        auditor="a",
        token_ttl=3600,
        timeout=60,
        threshold=th,
    )
    stored = RunPlan.from_dict(plan.to_dict())  # what a worker reads back from Redis
    calls: list[str] = []

    def counted(*args: Any) -> Threshold:
        calls.append("parsed")
        return parse_threshold(*args)

    monkeypatch.setattr(plan_module, "parse_threshold", counted)
    options = [stored.scan_options for _ in range(100)]
    assert calls == ["parsed"]
    assert all(o is options[0] for o in options)
    assert options[0].threshold is not None
    assert stored.to_dict() == plan.to_dict()


def test_a_plan_pinned_before_each_scan_keeps_its_parsed_thresholds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fleet worker pins a URL profile before every scan (profiles.pin_for_scan)."""
    th = tmp_path / "th.yml"
    th.write_text("compliance.min: 50\n")
    fleet = tmp_path / "fleet.yml"
    fleet.write_text("fleet: {failed.total.max: 0}\n")
    plan = RunPlan.new(
        source="submit",
        profile="https://profiles.example/p.tar.gz",
        now=datetime(2026, 1, 1, tzinfo=UTC),
        auditor="a",
        token_ttl=3600,
        timeout=60,
        threshold=th,
        fleet_threshold=fleet,
    )
    stored = RunPlan.from_dict(plan.to_dict())
    calls: list[str] = []

    def counted(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def parse(*args: Any) -> Any:
            calls.append(name)
            return real(*args)

        return parse

    monkeypatch.setattr(plan_module, "parse_threshold", counted("parse_threshold", parse_threshold))
    monkeypatch.setattr(
        plan_module,
        "parse_fleet_threshold",
        counted("parse_fleet_threshold", parse_fleet_threshold),
    )
    _ = stored.scan_options, stored.fleet
    pinned = [stored.pinned("ab" * 32, f"/cache/{i}.tar.gz") for i in range(10)]
    assert [p.scan_options.profile for p in pinned][-1] == "/cache/9.tar.gz"
    assert all(p.scan_options.profile_sha256 == "ab" * 32 for p in pinned)
    assert all(p.scan_options.threshold is stored.scan_options.threshold for p in pinned)
    assert all(p.fleet is stored.fleet for p in pinned)
    assert calls == ["parse_threshold", "parse_fleet_threshold"]


def test_the_stored_plan_is_the_plan_document_the_workers_read() -> None:
    """`RunPlan.to_dict` is typed as PlanDocument: the TypedDict names exactly the fields
    Redis gets (all but the in-memory `profile_url` and `profile_path`)."""
    from dataclasses import fields

    from scanfleet.judging.documents import PlanDocument

    plan = RunPlan(run_id="20260101T000000Z-abcdef", source="s", profile="p", created_at="t")
    stored = {f.name for f in fields(RunPlan)} - {"profile_url", "profile_path"}
    assert set(plan.to_dict()) == stored == set(PlanDocument.__annotations__)
    assert RunPlan.from_dict(plan.to_dict()) == plan
