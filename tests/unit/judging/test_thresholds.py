"""Threshold files: loading (flat, nested, both; strict) and judging counts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from scanfleet.core.errors import ThresholdFileError
from scanfleet.judging.report import Control, Counts, control_ids, load_report
from scanfleet.judging.thresholds import (
    FleetThreshold,
    Threshold,
    load_fleet_threshold,
    load_threshold,
    parse_fleet_threshold,
    parse_threshold,
)
from tests.support.fixtures_auditor import SAMPLES

REPORTS = sorted(p.name for p in SAMPLES.glob("*.json"))


def judged(controls: list[Control], threshold: Threshold) -> list[str]:
    return threshold.evaluate(Counts.from_controls(controls), control_ids(controls))


def parse(text: str) -> Threshold:
    return parse_threshold(yaml.safe_load(text), "t.yml")


def ctl(cid: str, status: str, severity: str) -> Control:
    return Control(cid, None, status, severity, 0.5)


# Two failed critical, one failed high, three passed medium, one no_impact none: compliance 50.
CONTROLS = [
    ctl("f1", "failed", "critical"),
    ctl("f2", "failed", "critical"),
    ctl("f3", "failed", "high"),
    ctl("p1", "passed", "medium"),
    ctl("p2", "passed", "medium"),
    ctl("p3", "passed", "medium"),
    ctl("n1", "no_impact", "none"),
]


@pytest.mark.parametrize("name", REPORTS)
def test_every_sample_meets_its_own_exact_threshold(name: str) -> None:
    threshold = load_threshold(SAMPLES / "thresholds" / f"{name}.exact-with-ids.yml")
    assert judged(load_report(SAMPLES / name), threshold) == []


def test_sample_exact_thresholds_check_something() -> None:
    # A different sample must fail the exact file: the check is not vacuous.
    threshold = load_threshold(SAMPLES / "thresholds" / "minimal_hdf.json.exact-with-ids.yml")
    assert judged(load_report(SAMPLES / "wrapper-acme-run.json"), threshold) != []


def test_red_hat_good_passes_the_saf_fixture() -> None:
    threshold = load_threshold(SAMPLES / "thresholds" / "red_hat_good.counts.good.yml")
    assert judged(load_report(SAMPLES / "red_hat_good.json"), threshold) == []


@pytest.mark.parametrize(
    "text",
    [
        "failed: {critical: {max: 2, min: 2}}",
        "failed.critical.max: 2\nfailed.critical.min: 2",
        "failed: {critical.max: 2}\nfailed.critical.min: 2",
        "FAILED.Critical.max: 2\nFailed: {CRITICAL: {min: 2}}",
    ],
)
def test_flat_nested_mixed_and_case_insensitive_forms_mean_the_same(text: str) -> None:
    t = parse(text)
    assert t.limits == {("failed", "critical"): (2, 2)}
    assert judged(CONTROLS, t) == []
    assert judged(CONTROLS[1:], t) == [
        "failed.critical.min: 1 failed critical control, at least 2 required"
    ]


def test_flat_min_and_max_are_both_honoured() -> None:
    t = parse("passed.medium.min: 4\npassed.medium.max: 5")
    assert judged(CONTROLS, t) == [
        "passed.medium.min: 3 passed medium controls, at least 4 required"
    ]
    t = parse("passed.medium.min: 0\npassed.medium.max: 2")
    assert judged(CONTROLS, t) == ["passed.medium.max: 3 passed medium controls, at most 2 allowed"]


def test_saf_generated_key_spellings_load() -> None:
    t = parse("passed.none.controls: []\nfailed.High.controls: [f3]\nno_impact.none.controls: [n1]")
    assert judged(CONTROLS, t) == []


def test_both_spellings_of_one_bucket_join_their_ids() -> None:
    # `saf generate threshold` writes failed.High.controls; a hand edit adds failed.high.
    t = parse("failed.high.controls: [f3]\nfailed.High.controls: [f9]")
    assert t.controls[("failed", "high")] == frozenset({"f3", "f9"})
    assert judged(CONTROLS, t) == ["failed.high.controls: 1 id, expected exactly 2; missing f9"]
    nested = parse("failed: {High: {controls: [f3]}, high: {controls: [f3]}}")
    assert judged(CONTROLS, nested) == []


def test_a_bound_under_both_spellings_must_agree() -> None:
    assert judged(CONTROLS, parse("failed.high.max: 1\nfailed.High.max: 1")) == []
    with pytest.raises(ThresholdFileError, match=r"failed\.High\.max: given twice"):
        parse("failed.high.max: 1\nfailed.High.max: 2")
    with pytest.raises(ThresholdFileError, match=r"targets\.Error\.max: given twice"):
        fleet("targets.error.max: 1\ntargets.Error.max: 2")
    with pytest.raises(ThresholdFileError, match=r"fleet\.failed\.High\.max: given twice"):
        fleet("fleet: {failed.high.max: 1, failed.High.max: 2}")


def test_every_failed_check_is_reported_with_key_actual_and_expected() -> None:
    t = parse(
        """
        compliance: {min: 80, max: 90}
        failed: {total: 1, critical: {max: 0}, high: {controls: [f3, f9]}}
        passed.total.min: 4
        passed.total.max: 9
        passed.medium.controls: [p1, p2]
        no_impact.total.max: 0
        error.none.min: 1
        """
    )
    assert judged(CONTROLS, t) == [
        "compliance.min: compliance 50%, at least 80% required",
        "passed.total.min: 3 passed controls, at least 4 required",
        "passed.medium.controls: 3 ids, expected exactly 2; unexpected p3",
        "failed.total: 3 failed controls, exactly 1 required",
        "failed.critical.max: 2 failed critical controls, at most 0 allowed",
        "failed.high.controls: 1 id, expected exactly 2; missing f9",
        "no_impact.total.max: 1 no_impact control, at most 0 allowed",
        "error.none.min: 0 error none controls, at least 1 required",
    ]


def test_compliance_max_and_zero_bounds_are_checked() -> None:
    assert judged(CONTROLS, parse("compliance.max: 0")) == [
        "compliance.max: compliance 50%, at most 0% allowed"
    ]
    assert judged([ctl("f", "failed", "low")], parse("compliance.min: 0")) == []
    assert judged(CONTROLS, parse("compliance: {max: 50}")) == []


def test_empty_controls_list_passes_on_an_empty_bucket() -> None:
    t = parse("failed.low.controls: []\nskipped.none.controls: []")
    assert judged(CONTROLS, t) == []
    assert judged([*CONTROLS, ctl("x", "failed", "low")], t) == [
        "failed.low.controls: 1 id, expected exactly 0; unexpected x"
    ]


def test_numeric_control_ids_are_compared_as_text() -> None:
    assert judged([ctl("1.1", "passed", "low")], parse("passed.low.controls: [1.1]")) == []


def test_evaluate_without_ids_sees_empty_buckets() -> None:
    t = parse("failed.high.controls: [f3]")
    assert t.evaluate(Counts.from_controls(CONTROLS)) == [
        "failed.high.controls: 0 ids, expected exactly 1; missing f3"
    ]


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("failed.critcal.max: 0", ["t.yml", "unknown key 'failed.critcal.max'"]),
        ("failed: {critical: 0}", ["unknown key 'failed.critical'"]),
        ("passed.total.mean: 1", ["unknown key 'passed.total.mean'"]),
        ("compliance.total: 1", ["unknown key 'compliance.total'"]),
        ("failed.critical.max: zero", ["failed.critical.max", "must be a number", "'zero'"]),
        ("failed.critical.max: '0'", ["failed.critical.max", "'0'"]),
        ("failed.critical.max: true", ["failed.critical.max", "True"]),
        ("failed.critical.max: -1", ["failed.critical.max", "0 or more", "-1"]),
        ("compliance.min: 101", ["compliance.min", "between 0 and 100", "101"]),
        ("failed.total: 1.5", ["failed.total", "whole number", "1.5"]),
        ("failed.critical.min: 3\nfailed.critical.max: 1", ["failed.critical", "min 3", "max 1"]),
        ("failed: {critical: {max: 1}}\nfailed.critical.min: 3", ["min 3 is greater than max 1"]),
        ("compliance: {min: 90, max: 80}", ["compliance", "min 90", "max 80"]),
        ("failed: {total: 5, total.max: 2}", ["failed.total", "outside"]),
        ("failed: {high: {max: 1}}\nfailed.high.max: 2", ["failed.high.max", "given twice"]),
        ("failed.high.controls: f3", ["failed.high.controls", "list of control ids", "'f3'"]),
        ("failed.high.controls: [{a: 1}]", ["failed.high.controls"]),
        ("- failed", ["must be a mapping"]),
        ("1: {max: 0}", ["invalid key 1"]),
        ("failed..max: 0", ["invalid key 'failed..max'"]),
        ("", ["t.yml", "empty"]),
        ("{}", ["empty"]),
        ("failed: {}", ["empty"]),
    ],
)
def test_strictness_errors_name_file_key_and_value(text: str, needles: list[str]) -> None:
    with pytest.raises(ThresholdFileError) as exc:
        parse(text)
    for needle in needles:
        assert needle in str(exc.value)


def test_load_threshold_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ThresholdFileError, match=r"cannot read threshold file .*missing\.yml"):
        load_threshold(tmp_path / "missing.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("failed: [unclosed\n")
    with pytest.raises(ThresholdFileError, match=r"bad\.yml: not valid YAML"):
        load_threshold(bad)
    empty = tmp_path / "empty.yml"
    empty.write_text("# nothing\n")
    with pytest.raises(ThresholdFileError, match=r"empty\.yml: threshold file is empty"):
        load_threshold(empty)
    good = tmp_path / "good.yml"
    good.write_text("failed.critical.max: 0\n")
    assert load_threshold(good).source == str(good)


def test_threshold_is_immutable() -> None:
    t = parse("failed.critical.max: 0")
    with pytest.raises(AttributeError):
        t.source = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        t.limits[("failed", "high")] = (0, 0)  # type: ignore[index]


# --- fleet thresholds ---------------------------------------------------------------------

TARGETS = {"total": 10, "completed": 8, "error": 2, "passed": 6, "failed": 2}


def fleet(text: str) -> FleetThreshold:
    return parse_fleet_threshold(yaml.safe_load(text), "f.yml")


def test_fleet_threshold_judges_summed_counts_and_targets() -> None:
    f = fleet(
        """
        fleet: {failed.critical.max: 0, compliance: {min: 40}}
        targets:
          error: {max: 1}
          passed: {min: 7}
          failed.max: 2
          compliance: {min: 80}
        """
    )
    counts = Counts.from_controls(CONTROLS)
    assert f.bounds_errors
    assert f.evaluate(counts, control_ids(CONTROLS), TARGETS) == [
        "fleet.failed.critical.max: 2 failed critical controls, at most 0 allowed",
        "targets.passed.min: 6 targets met their threshold, at least 7 required",
        "targets.error.max: 2 targets could not be scanned, at most 1 allowed",
        "targets.compliance.min: 75% of completed targets met their threshold, "
        "at least 80% required",
    ]
    ok = dict(TARGETS, error=1, passed=7, failed=1)
    assert fleet("targets: {error: {max: 1}, passed.min: 7}").evaluate(counts, None, ok) == []


def test_fleet_without_targets_error_does_not_bound_errors() -> None:
    f = fleet("fleet:\n  failed:\n    total:\n      max: 5\ntargets.failed.max: 0")
    assert not f.bounds_errors
    assert f.evaluate(Counts(), None, TARGETS) == [
        "targets.failed.max: 2 targets failed their threshold, at most 0 allowed"
    ]


def test_fleet_controls_judge_the_union_of_ids() -> None:
    f = fleet("fleet: {failed: {high: {controls: [f3]}}}")
    ids = {"failed": {"high": ["f3"]}}
    assert f.evaluate(Counts(), ids, TARGETS) == []
    assert f.fleet is not None
    assert f.evaluate(Counts(), {}, TARGETS) == [
        "fleet.failed.high.controls: 0 ids, expected exactly 1; missing f3"
    ]


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("fleets: {failed.critical.max: 0}", ["f.yml", "unknown key 'fleets.failed.critical.max'"]),
        ("failed.critical.max: 0", ["unknown key 'failed.critical.max'", "fleet, targets"]),
        ("targets: {errors: {max: 1}}", ["unknown key 'targets.errors.max'"]),
        ("targets: {error: 1}", ["unknown key 'targets.error'"]),
        ("targets: {error: {max: many}}", ["targets.error.max", "'many'"]),
        ("targets: {error: {min: 3, max: 1}}", ["targets.error", "min 3", "max 1"]),
        ("targets.compliance.min: 120", ["targets.compliance.min", "120"]),
        ("fleet: {failed.critical.mx: 0}", ["unknown key 'fleet.failed.critical.mx'"]),
        ("fleet: {failed.high: {min: 2, max: 1}}", ["fleet.failed.high", "min 2"]),
        ("", ["f.yml", "empty"]),
        ("fleet:", ["unknown key 'fleet'"]),
    ],
)
def test_fleet_strictness(text: str, needles: list[str]) -> None:
    with pytest.raises(ThresholdFileError) as exc:
        fleet(text)
    for needle in needles:
        assert needle in str(exc.value)


def test_load_fleet_threshold(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yml"
    path.write_text("targets:\n  error:\n    max: 0\n")
    assert load_fleet_threshold(path).targets == {"error": (None, 0)}
    with pytest.raises(ThresholdFileError, match=r"missing\.yml"):
        load_fleet_threshold(tmp_path / "missing.yml")
