"""One outcome rule: a completed summary with malformed `controls` is an error everywhere.

Before `summaries.judge`, the aggregator called it an error while Markdown/HTML (through
render.outcome) and JUnit called the same summary a pass. Every reader now asks `judge`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest

from scanfleet.judging.aggregate import Aggregator
from scanfleet.judging.documents import Outcome, judge, scanned_summary, target_doc
from scanfleet.judging.report import Counts
from scanfleet.runs.drift import diff_summaries
from tests.support.report_runs import render

TARGET = {"context": "east", "namespace": "apps", "pod": "web", "container": "app"}


def _summary(controls: Any) -> dict[str, Any]:
    s = dict(
        scanned_summary(
            scan_id="0123456789abcdef",
            run_id="20260301T101500Z-a1b2c3",
            target=target_doc(TARGET, "img:1", "sha256:1"),
            started_at="2026-03-01T10:15:00Z",
            finished_at="2026-03-01T10:16:00Z",
            duration_s=60,
            cleanup="complete",
            counts=Counts(),
            ids={},
            threshold={"passed": True, "failures": []},
        )
    )
    s["controls"] = controls
    return s


def _run(summary: dict[str, Any]) -> dict[str, Any]:
    agg = Aggregator()
    agg.add(summary)
    return {
        "run_id": summary["run_id"],
        "source": "scan",
        "profile": "p",
        "created_at": "2026-03-01T10:15:00Z",
        "finished_at": "2026-03-01T10:16:00Z",
        **agg.result(),
    }


@pytest.mark.parametrize("controls", [{"failed": "nope"}, ["x"], {"bogus": {}}])
def test_malformed_controls_are_one_error_verdict_in_every_format(controls: Any) -> None:
    summary = _summary(controls)
    assert judge(summary).outcome is Outcome.ERROR
    assert judge(summary).error is not None
    assert judge(summary).error["kind"] == "invalid_report"  # type: ignore[index]
    run = _run(summary)
    assert run["targets"]["error"] == 1
    assert run["targets"]["passed"] == 0
    assert run["exit_code"] == 3
    assert "ERROR" in render("markdown", run)
    assert "ERROR" in render("html", run)
    assert '"exit_code": 3' in render("json", run, lambda: [summary])
    suite = ET.fromstring(render("junit", run, lambda: [summary]))
    case = next(suite.iter("testcase"))
    error = case.find("error")
    assert error is not None
    assert error.get("type") == "invalid_report"
    assert case.find("failure") is None
    # drift: an error target has no control lists to compare, only its status change
    good = _summary({"failed": {"high": ["C-1"]}})
    drift = diff_summaries([good], [summary])
    assert drift["totals"]["newly_failing"] == 0
    assert drift["totals"]["fixed"] == 0


def test_well_formed_controls_pass() -> None:
    summary = _summary({"failed": {"high": ["C-1"]}})
    assert judge(summary).outcome is Outcome.PASSED
    assert _run(summary)["exit_code"] == 0
    case = next(ET.fromstring(render("junit", _run(summary), lambda: [summary])).iter("testcase"))
    assert case.find("error") is None
    assert case.find("failure") is None
