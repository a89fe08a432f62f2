"""The run plan parses its thresholds once, not once per target."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

import scanfleet.scan.plan as plan_module
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
    real = plan_module.parse_threshold
    monkeypatch.setattr(
        plan_module, "parse_threshold", lambda *a: calls.append("parsed") or real(*a)
    )
    options = [stored.scan_options for _ in range(100)]
    assert calls == ["parsed"]
    assert all(o is options[0] for o in options)
    assert options[0].threshold is not None
    assert stored.to_dict() == plan.to_dict()
