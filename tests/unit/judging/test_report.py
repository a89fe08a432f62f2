"""Report parsing: which controls count, their status and severity, counts and compliance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scanfleet.core.errors import InvalidReport
from scanfleet.judging.report import (
    SEVERITIES,
    STATUSES,
    Control,
    Counts,
    compliance_of,
    control_ids,
    load_report,
    parse_report,
)
from tests.support.fixtures_auditor import SAMPLES

# SOURCES.md: SAF counts P/F/S/NA/E and compliance per sample.
TABLE = {
    "minimal_hdf.json": ((0, 1, 0, 0, 0), 0),
    "inspec_fixture_json_output.json": ((3, 1, 0, 0, 0), 75),
    "rhel8_sample_oneOfEachControlStatus.json": ((1, 1, 1, 1, 0), 33),
    "triple_overlay_profile_sample.json": ((1, 1, 2, 1, 0), 25),
    "wrapper-acme-run.json": ((5, 60, 35, 1, 0), 5),
    "red_hat_good.json": ((213, 0, 9, 24, 1), 96),
}


def control(cid: str = "c1", impact: Any = 0.5, **extra: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"id": cid, "title": f"title {cid}", "impact": impact, "tags": {}}
    c.update(extra)
    return c


def result(status: str = "passed", **extra: Any) -> dict[str, Any]:
    return {"status": status, "code_desc": "x", **extra}


def one(ctrl: dict[str, Any]) -> Control:
    [parsed] = parse_report({"profiles": [{"name": "p", "controls": [ctrl]}]})
    return parsed


@pytest.mark.parametrize("name", sorted(TABLE))
def test_sample_counts_match_saf(name: str) -> None:
    counts = Counts.from_controls(load_report(SAMPLES / name))
    expected, compliance = TABLE[name]
    assert tuple(counts.get(s) for s in STATUSES) == expected
    assert counts.compliance == compliance


def test_every_sample_is_in_the_table() -> None:
    assert {p.name for p in SAMPLES.glob("*.json")} == set(TABLE)


def test_impact_zero_stig_control_keeps_its_severity_tag() -> None:
    ids = control_ids(load_report(SAMPLES / "rhel8_sample_oneOfEachControlStatus.json"))
    assert ids["no_impact"]["high"] != []


@pytest.mark.parametrize(
    ("ctrl", "status"),
    [
        (control(results=[result("passed"), result("error")]), "error"),
        (control(results=[result("passed", backtrace=["x.rb:1"])]), "error"),
        (control(impact=0, results=[result("passed", backtrace=["x"])]), "error"),
        (
            control(results=[result("failed")], waiver_data={"skipped_due_to_waiver": True}),
            "no_impact",
        ),
        (control(impact=0.0, results=[result("failed")]), "no_impact"),
        (control(impact=0, results=[]), "no_impact"),
        (control(results=[]), "error"),
        (control(), "error"),
        (control(results=[result("passed"), result("failed"), result("skipped")]), "failed"),
        (control(results=[result("passed"), result("skipped")]), "passed"),
        (control(results=[result("skipped"), result("skipped")]), "skipped"),
        (control(results=[result("weird")]), "error"),
        (
            control(results=[result("failed")], waiver_data={"skipped_due_to_waiver": False}),
            "failed",
        ),
    ],
)
def test_status_rules_first_match_wins(ctrl: dict[str, Any], status: str) -> None:
    assert one(ctrl).status == status


@pytest.mark.parametrize(
    ("impact", "tags", "severity"),
    [
        (0.5, {"severityoverride": "low", "severity": "high"}, "low"),
        (0.5, {"severityoverride": "bogus", "severity": "high"}, "high"),
        (0.5, {"severity": "HIGH"}, "high"),
        (0.5, {"severity": "Critical"}, "critical"),
        (0.1, {"severity": "unknown"}, "low"),
        (0.0, {}, "none"),
        (0.09, {}, "none"),
        (0.1, {}, "low"),
        (0.39, {}, "low"),
        (0.4, {}, "medium"),
        (0.69, {}, "medium"),
        (0.7, {}, "high"),
        (0.89, {}, "high"),
        (0.9, {}, "critical"),
        (1, {}, "critical"),
    ],
)
def test_severity_rules(impact: float, tags: dict[str, str], severity: str) -> None:
    assert one(control(impact=impact, tags=tags, results=[result()])).severity == severity


def test_impact_zero_with_severity_tag_counts_under_no_impact_of_that_severity() -> None:
    c = one(control(impact=0, tags={"severity": "high"}, results=[result("skipped")]))
    assert (c.status, c.severity) == ("no_impact", "high")


def overlay(parent_name: str) -> dict[str, Any]:
    """An overlay run: profiles[0] lists the controls without results."""
    return {
        "profiles": [
            {"name": "overlay", "controls": [control("a", impact=0.7), control("b")]},
            {
                "name": "base",
                "parent_profile": parent_name,
                "controls": [
                    control("a", impact=0.3, results=[result("failed")]),
                    control("b", results=[result("passed")]),
                ],
            },
        ]
    }


def test_overlay_counts_each_control_once_from_its_root() -> None:
    parsed = {c.id: c for c in parse_report(overlay("overlay"))}
    assert sorted(parsed) == ["a", "b"]
    assert (parsed["a"].status, parsed["a"].severity, parsed["a"].impact) == ("failed", "low", 0.3)
    assert parsed["a"].title == "title a"


def test_missing_parent_falls_back_to_first_control_with_results() -> None:
    parsed = parse_report(overlay("no-such-profile"))
    assert [(c.id, c.status) for c in parsed] == [("a", "failed"), ("b", "passed")]


def test_parent_loop_does_not_hang_and_counts_each_id_once() -> None:
    report = overlay("overlay")
    report["profiles"][0]["parent_profile"] = "base"
    assert sorted((c.id, c.status) for c in parse_report(report)) == [
        ("a", "failed"),
        ("b", "passed"),
    ]


def test_two_independent_profiles_are_both_counted() -> None:
    report = {
        "profiles": [
            {"name": "one", "controls": [control("x", results=[result("passed")])]},
            {"name": "two", "controls": [control("y", results=[result("failed")])]},
        ]
    }
    assert sorted((c.id, c.status) for c in parse_report(report)) == [
        ("x", "passed"),
        ("y", "failed"),
    ]


def test_an_id_in_two_independent_profiles_counts_once_from_the_first_with_results() -> None:
    report = {
        "profiles": [
            {
                "name": "one",
                "controls": [control("x", results=[result("passed")]), control("z", impact=0.9)],
            },
            {
                "name": "two",
                "controls": [
                    control("x", results=[result("failed")]),
                    control("z", impact=0.3, results=[result("failed")]),
                ],
            },
        ]
    }
    parsed = parse_report(report)
    assert [(c.id, c.status) for c in parsed] == [("x", "passed"), ("z", "failed")]
    # z: the first control with results is profile two's, so its impact and severity count.
    assert (parsed[1].impact, parsed[1].severity) == (0.3, "low")
    counts = Counts.from_controls(parsed)
    assert (counts.total, counts.get("passed"), counts.get("failed")) == (2, 1, 1)


def test_dependency_control_the_wrapper_does_not_list_is_counted() -> None:
    report = overlay("overlay")
    report["profiles"][1]["controls"].append(control("c", results=[result("skipped")]))
    assert sorted(c.id for c in parse_report(report)) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ([], "top level is not an object"),
        ({"controls": []}, "no 'profiles' list"),
        ({"profiles": {}}, "no 'profiles' list"),
        ({"profiles": ["x"]}, "profile #0 is not an object"),
        ({"profiles": [{"name": "p", "controls": {}}]}, "has no control list"),
        ({"profiles": [{"name": "p", "controls": [{"title": "t"}]}]}, "control #0 of profile #0"),
        ({"profiles": [{"name": "p", "controls": [{"id": ""}]}]}, "has no id"),
        ({"profiles": [{"controls": [control(impact="high")]}]}, "non-numeric impact"),
        ({"profiles": [{"controls": [control(results="x")]}]}, "malformed results"),
    ],
)
def test_not_an_exec_json_report(data: object, needle: str) -> None:
    with pytest.raises(InvalidReport, match=needle):
        parse_report(data)


def test_load_report_errors_name_the_file_not_the_payload(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"profiles": [ {"secret-token": "abc"')
    with pytest.raises(InvalidReport, match="not valid JSON") as exc:
        load_report(bad)
    assert "secret-token" not in str(exc.value)
    with pytest.raises(InvalidReport, match="cannot read report"):
        load_report(tmp_path / "missing.json")
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"profiles": [{"controls": [control(results=[result()])]}]}))
    assert [c.status for c in load_report(good)] == ["passed"]


@pytest.mark.parametrize(
    ("passed", "denominator", "expected"),
    [(0, 0, 0), (1, 3, 33), (2, 3, 67), (1, 8, 13), (1, 200, 1), (1, 400, 0), (5, 5, 100)],
)
def test_compliance_rounds_half_up(passed: int, denominator: int, expected: int) -> None:
    assert compliance_of(passed, denominator) == expected


def test_counts_shape_sum_and_round_trip() -> None:
    controls = [
        Control("a", None, "passed", "high", 0.7),
        Control("b", None, "failed", "critical", 1.0),
        Control("c", None, "no_impact", "none", 0.0),
        Control("d", None, "error", "medium", 0.5),
    ]
    counts = Counts.from_controls(controls)
    d = counts.to_dict()
    assert list(d) == list(STATUSES)
    assert all(list(b) == ["total", *SEVERITIES] for b in d.values())
    assert d["failed"] == {"total": 1, "critical": 1, "high": 0, "medium": 0, "low": 0, "none": 0}
    assert Counts.from_dict(json.loads(json.dumps(d))) == counts
    assert counts.total == 4
    assert counts.compliance == 33  # no_impact is in neither part
    doubled = counts + counts
    assert doubled.get("passed", "high") == 2
    assert counts.get("passed") == 1
    counts.add(doubled)
    assert counts.total == 12
    assert Counts().compliance == 0


@pytest.mark.parametrize(
    "bad", [None, [], {"bogus": {}}, {"passed": {"high": -1}}, {"passed": {"huge": 1}}]
)
def test_counts_from_dict_rejects_malformed(bad: object) -> None:
    with pytest.raises(ValueError, match="counts"):
        Counts.from_dict(bad)


def test_control_ids_sorted_per_bucket_with_every_bucket_present() -> None:
    ids = control_ids(
        [Control("z", None, "failed", "high", 0.7), Control("a", None, "failed", "high", 0.7)]
    )
    assert ids["failed"]["high"] == ["a", "z"]
    assert set(ids) == set(STATUSES)
    assert all(set(b) == set(SEVERITIES) for b in ids.values())
