"""Run aggregation: sums, groupings, top failing controls, fleet thresholds, exit codes."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from scanfleet.judging.aggregate import Aggregator, exit_code
from scanfleet.judging.report import STATUSES, Control, Counts, load_report
from scanfleet.judging.thresholds import FleetThreshold, parse_fleet_threshold
from tests.support.fixtures_auditor import SAMPLES
from tests.support.summaries import summary


def fleet(text: str) -> FleetThreshold:
    return parse_fleet_threshold(yaml.safe_load(text), "f.yml")


def ctl(cid: str, status: str, severity: str) -> Control:
    return Control(cid, None, status, severity, 0.5)


ERR = {"kind": "timeout", "message": "auditor timed out after 1800 s"}


def test_aggregating_the_samples_equals_the_sum_of_their_counts() -> None:
    agg = Aggregator()
    expected = Counts()
    for n, path in enumerate(sorted(SAMPLES.glob("*.json"))):
        controls = load_report(path)
        expected.add(Counts.from_controls(controls))
        agg.add(summary(n, controls, context=f"ctx{n % 2}", passed=n != 0))
    result = agg.result(None)
    assert result["counts"] == expected.to_dict()
    assert result["compliance"] == expected.compliance
    assert result["targets"] == {"total": 6, "completed": 6, "error": 0, "passed": 5, "failed": 1}
    clusters = result["by_cluster"]
    assert sorted(clusters) == ["ctx0", "ctx1"]
    summed = Counts.from_dict(clusters["ctx0"]["counts"]) + Counts.from_dict(
        clusters["ctx1"]["counts"]
    )
    assert summed == expected
    assert result["exit_code"] == 1  # one target failed its threshold
    top = result["top_failing_controls"]
    assert len(top) == 20
    assert all(t["targets"] == 1 for t in top)


def test_groups_targets_and_failures() -> None:
    a = [ctl("A", "failed", "high"), ctl("B", "failed", "low"), ctl("P", "passed", "low")]
    b = [ctl("A", "failed", "high"), ctl("C", "failed", "critical")]
    agg = Aggregator()
    agg.add(summary(1, a, context="east", namespace="web", passed=False))
    agg.add(summary(2, b, context="west", namespace="web", image=None))
    agg.add(summary(3, b, context="west", namespace="db", covered_by="s00002"))
    agg.add(summary(4, context="west", namespace="db", error=ERR))
    result = agg.result(None)
    assert result["targets"] == {"total": 4, "completed": 3, "error": 1, "passed": 2, "failed": 1}
    assert result["by_namespace"]["web"]["targets"]["total"] == 2
    assert result["by_namespace"]["db"]["targets"] == {
        "total": 2,
        "completed": 1,
        "error": 1,
        "passed": 1,
        "failed": 0,
    }
    assert result["by_cluster"]["west"]["counts"]["failed"]["total"] == 4
    assert result["by_cluster"]["east"]["compliance"] == 33
    assert sorted(result["by_image"]) == ["img:1", "sha256:abc"]
    assert result["top_failing_controls"] == [
        {"id": "A", "severity": "high", "targets": 3, "title": None, "images": 1},
        {"id": "C", "severity": "critical", "targets": 2, "title": None, "images": 1},
        {"id": "B", "severity": "low", "targets": 1, "title": None, "images": 1},
    ]
    assert result["failing_targets"] == [
        {
            "scan_id": "s00001",
            "context": "east",
            "namespace": "web",
            "pod": "pod-00001",
            "container": "app",
            "failures": ["x"],
            # a summary without `failed_controls` names its failed ids, titles unknown
            "failed_controls": [
                {"id": "A", "title": None, "severity": "high"},
                {"id": "B", "title": None, "severity": "low"},
            ],
            "failed_controls_total": 2,
        }
    ]
    [err] = result["error_targets"]
    assert (err["scan_id"], err["error"]) == ("s00004", ERR)
    assert result["fleet_threshold"] == {"passed": None, "failures": []}
    assert result["exit_code"] == 1


def test_target_without_threshold_counts_as_passed() -> None:
    agg = Aggregator()
    s = summary(1, [ctl("x", "failed", "high")])
    s["threshold"] = {"passed": None, "failures": []}
    agg.add(s)
    assert agg.result(None)["targets"]["passed"] == 1
    assert agg.result(None)["exit_code"] == 0


def test_malformed_summary_is_an_error_target_and_does_not_stop_aggregation() -> None:
    agg = Aggregator()
    bad = summary(1, [ctl("x", "passed", "low")])
    bad["counts"] = {"passed": {"low": "many"}}
    agg.add(bad)
    agg.add(summary(2, [ctl("x", "passed", "low")]))
    result = agg.result(None)
    assert result["targets"] == {"total": 2, "completed": 1, "error": 1, "passed": 1, "failed": 0}
    assert result["error_targets"][0]["error"]["kind"] == "invalid_report"


def test_target_refs_are_bounded_and_in_target_order() -> None:
    agg = Aggregator()
    for n in reversed(range(350)):
        agg.add(summary(n, [ctl("x", "failed", "low")], passed=False))
    refs = agg.result(None)["failing_targets"]
    assert len(refs) == 100
    assert [r["pod"] for r in refs] == [f"pod-{n:05d}" for n in range(100)]
    assert len(agg.failing_targets.items) < 200


FLEET = """
fleet: {failed.critical.max: 0, failed.critical.controls: []}
targets: {error: {max: 1}, compliance: {min: 50}}
"""


@pytest.mark.parametrize(
    ("summaries", "passed", "failures", "code"),
    [
        ([summary(1, [ctl("a", "passed", "low")])], True, [], 0),
        (
            [summary(1, [ctl("a", "passed", "low")]), summary(2, error=ERR)],
            True,
            [],
            0,  # one error is within targets.error.max: the fleet threshold judged it
        ),
        (
            [summary(1), summary(2, error=ERR), summary(3, error=ERR)],
            False,
            ["targets.error.max: 2 targets could not be scanned, at most 1 allowed"],
            1,
        ),
        (
            [summary(1, [ctl("k", "failed", "critical")]), summary(2, passed=False)],
            False,
            [
                "fleet.failed.critical.max: 1 failed critical control, at most 0 allowed",
                "fleet.failed.critical.controls: 1 id, expected exactly 0; unexpected k",
            ],
            1,
        ),
        (
            [summary(1, passed=False), summary(2, passed=False), summary(3)],
            False,
            [
                "targets.compliance.min: 33% of completed targets met their threshold, "
                "at least 50% required"
            ],
            1,
        ),
    ],
)
def test_fleet_threshold_and_exit_code(
    summaries: list[dict[str, Any]], passed: bool, failures: list[str], code: int
) -> None:
    agg = Aggregator()
    for s in summaries:
        agg.add(s)
    result = agg.result(fleet(FLEET))
    assert result["fleet_threshold"] == {"passed": passed, "failures": failures}
    assert result["exit_code"] == code


def test_errors_without_a_bounding_fleet_threshold_exit_3() -> None:
    agg = Aggregator()
    agg.add(summary(1, [ctl("a", "passed", "low")]))
    agg.add(summary(2, error=ERR))
    assert agg.result(None)["exit_code"] == 3
    result = agg.result(fleet("fleet: {failed.total.max: 0}"))
    assert result["fleet_threshold"]["passed"] is True
    assert result["exit_code"] == 3


@pytest.mark.parametrize(
    ("failed", "errors", "fleet_passed", "bounded", "code"),
    [
        (0, 0, None, False, 0),
        (0, 0, True, False, 0),
        (1, 0, None, False, 1),
        (0, 0, False, False, 1),
        (1, 2, None, False, 1),
        (0, 2, None, False, 3),
        (0, 2, True, False, 3),
        (0, 2, True, True, 0),
        (0, 2, False, True, 1),
    ],
)
def test_exit_code_rules(
    failed: int, errors: int, fleet_passed: bool | None, bounded: bool, code: int
) -> None:
    assert (
        exit_code(
            failed_targets=failed,
            error_targets=errors,
            fleet_passed=fleet_passed,
            errors_bounded=bounded,
        )
        == code
    )


def test_empty_run() -> None:
    result = Aggregator().result(None)
    assert result["targets"]["total"] == 0
    assert result["compliance"] == 0
    assert set(result["counts"]) == set(STATUSES)
    assert result["exit_code"] == 0


def test_error_targets_carry_the_kind_and_a_short_sanitized_first_line() -> None:
    from scanfleet.judging.aggregate import MAX_ERROR_LINE, error_line

    stderr = "\x1b]0;pwned\x07boom " + "x" * 500 + "\nsecond line from the container"
    agg = Aggregator()
    s = summary(1, [])
    s["status"], s["counts"], s["controls"] = "error", None, None
    s["error"] = {"kind": "auditor_failed", "message": f"auditor exited with code 1: {stderr}"}
    agg.add(s)
    [ref] = agg.result(None)["error_targets"]
    message = ref["error"]["message"]
    assert ref["error"]["kind"] == "auditor_failed"
    assert message.startswith("auditor exited with code 1: boom x")
    assert len(message) == MAX_ERROR_LINE
    assert "second line" not in message
    assert "\x1b" not in message
    assert "\x07" not in message
    assert error_line(None) == ""
