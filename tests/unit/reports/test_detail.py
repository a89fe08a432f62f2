"""Failed-control detail: parsed from the real samples, carried by the target summary,
aggregated into run.json and shown by markdown and junit within their size limits."""

from __future__ import annotations

import re
from typing import Any

from scanfleet.judging.aggregate import Aggregator
from scanfleet.judging.documents import (
    MAX_FIX,
    MAX_MESSAGE,
    failed_controls,
    failed_controls_of,
)
from scanfleet.judging.report import Control, load_report, parse_report
from scanfleet.reports.markdown import MAX_CHARS
from tests.support.paths import SAMPLES
from tests.support.report_runs import render, validate_junit

RHEL8 = SAMPLES / "rhel8_sample_oneOfEachControlStatus.json"


def test_a_failed_control_carries_its_failing_message_and_fix_text() -> None:
    [c] = [c for c in load_report(RHEL8) if c.status == "failed"]
    assert c.id == "SV-230222"
    assert c.title
    assert c.title.startswith("RHEL 8 vendor packaged system security patches")
    assert c.message == 'expected `["libsemanage"].empty?` to be truthy, got false'
    assert c.fix
    assert c.fix.startswith("Install the operating system patches")


def test_controls_that_did_not_fail_carry_no_message_or_fix() -> None:
    others = [c for c in load_report(RHEL8) if c.status != "failed"]
    assert others
    assert all(c.message is None and c.fix is None for c in others)


def _report(control: dict[str, Any]) -> dict[str, Any]:
    base = {"id": "C-1", "title": "t", "impact": 0.7, "tags": {}}
    return {"profiles": [{"name": "p", "controls": [{**base, **control}]}]}


def test_message_falls_back_to_code_desc_and_fix_to_check() -> None:
    [c] = parse_report(
        _report(
            {
                "descriptions": [{"label": "check", "data": "Run the check."}],
                "results": [
                    {"status": "passed", "code_desc": "first passed"},
                    {"status": "failed", "code_desc": "the file is world-writable"},
                ],
            }
        )
    )
    assert (c.message, c.fix) == ("the file is world-writable", "Run the check.")


def test_descriptions_as_an_object_are_read_too() -> None:
    [c] = parse_report(
        _report(
            {
                "descriptions": {"check": "c", "fix": "Set the mode to 0600."},
                "results": [{"status": "failed", "message": "mode is 0666"}],
            }
        )
    )
    assert (c.message, c.fix) == ("mode is 0666", "Set the mode to 0600.")


def test_summary_detail_is_sorted_by_severity_and_clipped() -> None:
    controls = [
        Control("b", "low one", "failed", "low", 0.3, message="m", fix=None),
        Control("a", "crit", "failed", "critical", 1.0, message="x" * 5000, fix="f" * 9000),
        Control("p", "passed", "passed", "high", 0.7),
    ]
    detail = failed_controls(controls)
    assert [d["id"] for d in detail] == ["a", "b"]
    assert len(detail[0]["message"] or "") == MAX_MESSAGE
    assert len(detail[0]["fix"] or "") == MAX_FIX
    assert (detail[0]["message"] or "").endswith("…")
    assert detail[1] == {
        "id": "b",
        "title": "low one",
        "severity": "low",
        "impact": 0.3,
        "message": "m",
        "fix": None,
    }


def test_malformed_detail_is_dropped_not_trusted() -> None:
    summary = {
        "failed_controls": [
            {"id": "ok", "title": 3, "severity": "bogus", "message": ["x"], "fix": "f"},
            {"title": "no id"},
            "not an object",
        ]
    }
    assert failed_controls_of(summary) == [
        {"id": "ok", "title": None, "severity": "none", "message": None, "fix": "f"}
    ]


def _failing_summary(n: int, controls: list[Control]) -> dict[str, Any]:
    from scanfleet.judging.report import Counts, control_ids

    return {
        "scan_id": f"s{n:05d}",
        "target": {
            "context": "c",
            "namespace": "ns",
            "pod": f"pod-{n:05d}",
            "container": "app",
            "image": f"img:{n % 3}",
            "image_id": None,
        },
        "status": "completed",
        "counts": Counts.from_controls(controls).to_dict(),
        "controls": control_ids(controls),
        "threshold": {"passed": False, "failures": ["failed.critical.max: too many"]},
        "failed_controls": failed_controls(controls),
    }


def test_run_json_names_titles_images_and_each_failing_targets_controls() -> None:
    agg = Aggregator()
    controls = [
        Control(f"C-{i:03d}", f"Title {i} " + "w" * 100, "failed", "critical", 1.0)
        for i in range(25)
    ]
    for n in range(100):
        agg.add(_failing_summary(n, controls))
    run: dict[str, Any] = {"run_id": "r", **agg.result(None)}
    top: Any = run["top_failing_controls"][0]
    assert top["id"] == "C-000"
    assert top["title"].startswith("Title 0 ")
    assert (top["targets"], top["images"]) == (100, 3)
    ref: Any = run["failing_targets"][0]
    assert ref["failed_controls_total"] == 25
    assert len(ref["failed_controls"]) == 20
    assert ref["failed_controls"][0] == {
        "id": "C-000",
        "title": controls[0].title,
        "severity": "critical",
    }

    md = render("markdown", run)
    assert len(md) <= MAX_CHARS
    assert "| C-000 | critical | Title 0 " in md
    assert "GitHub's comment limit is 65,536" in md
    shown = re.search(r"_Showing (\d+) of 100 failing targets", md)
    assert shown is not None
    assert 0 < int(shown.group(1)) < 100
    assert md.count("… and 15 more") == int(shown.group(1))
    widths = {len(re.split(r"(?<!\\)\|", line)) for line in md.splitlines() if "pod-" in line}
    assert len(widths) == 1


def test_junit_failure_names_the_failed_controls_and_threshold_rules() -> None:
    controls = [
        Control(f"C-{i:03d}", f"Title {i}", "failed", "high", 0.7, message=f"msg {i}")
        for i in range(12)
    ]
    summary = _failing_summary(1, controls)
    root = validate_junit(render("junit", {"run_id": "r"}, lambda: [summary]))
    failure = root.find(".//failure")
    assert failure is not None
    message = failure.get("message") or ""
    assert "failed.critical.max: too many" in message
    assert "12 failed controls: C-000 (high) Title 0; C-001 (high) Title 1" in message
    assert "C-009 (high) Title 9; … and 2 more" in message
    body = failure.text or ""
    assert "- C-011 (high) Title 11\n    msg 11" in body
