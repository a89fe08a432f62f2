"""Run reports rendered from a run built out of the real sample reports.

The run is made the way a real one is: each sample parsed with `load_report`, judged with a
target threshold, summarised, written through `results.write_json`, folded by the
Aggregator into run.json. `write_run` is shared with test_report_cli.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from io import StringIO
from pathlib import Path
from typing import Any

import pytest

from scanfleet.reports.json import write_json
from scanfleet.reports.markdown import md_cell
from scanfleet.store.files import iter_summaries, run_dir
from tests.support.report_runs import (
    FAILING,
    FULL,
    HOSTILE,
    NETWORK_REF,
    PASSING,
    PROFILE,
    RUN_ID,
    WITH_ERROR,
    Spec,
    render,
    scan_id,
    validate_junit,
    write_run,
)


@pytest.fixture
def full_run(results: Path) -> dict[str, Any]:
    return write_run(results, FULL, fleet="targets: {error: {max: 0}}")


def summaries_of(results: Path) -> Any:
    return lambda: iter_summaries(run_dir(results, RUN_ID))


def test_the_built_run_is_what_the_tests_assume(full_run: dict[str, Any]) -> None:
    assert full_run["targets"] == {"total": 8, "completed": 7, "error": 1, "passed": 4, "failed": 3}
    assert {f["pod"] for f in full_run["failing_targets"]} == FAILING
    assert full_run["fleet_threshold"]["passed"] is False
    assert full_run["exit_code"] == 1


# --- json -------------------------------------------------------------------------------


def test_json_is_run_json_plus_every_target_summary(
    results: Path, full_run: dict[str, Any]
) -> None:
    data = json.loads(render("json", full_run, summaries_of(results)))
    detail = data.pop("targets_detail")
    assert data == full_run
    assert len(detail) == full_run["targets"]["total"] == 8
    assert {d["scan_id"] for d in detail} == {scan_id(s) for s in FULL}
    error = next(d for d in detail if d["status"] == "error")
    assert error["error"] == {"kind": "timeout", "message": HOSTILE}
    covered = next(d for d in detail if d["target"]["pod"] == "worker-9x1z")
    assert covered["covered_by"] == scan_id(FULL[1])


def test_json_writes_each_summary_before_reading_the_next(
    results: Path, full_run: dict[str, Any]
) -> None:
    out = StringIO()
    seen = 0

    def summaries() -> Any:
        nonlocal seen
        for s in iter_summaries(run_dir(results, RUN_ID)):
            # everything pulled so far is already in the output
            detail = out.getvalue().partition('"targets_detail"')[2]
            assert detail.count('"scan_id"') == seen
            seen += 1
            yield s

    write_json(full_run, summaries, out)
    assert seen == 8
    assert len(json.loads(out.getvalue())["targets_detail"]) == 8


def test_json_of_a_run_without_targets_is_valid(full_run: dict[str, Any]) -> None:
    assert json.loads(render("json", full_run))["targets_detail"] == []


# --- markdown ---------------------------------------------------------------------------


def _table_rows(md: str) -> list[list[str]]:
    """Each table: the cell counts of its lines (escaped pipes are not separators)."""
    tables: list[list[str]] = []
    current: list[str] = []
    for line in [*md.splitlines(), ""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables


def test_markdown_says_the_verdict_and_the_numbers_behind_it(full_run: dict[str, Any]) -> None:
    md = render("markdown", full_run)
    assert md.startswith(f"## scanfleet run `{RUN_ID}`: **FAIL**")
    assert "Exit code 1." in md
    assert "3 of 7 scanned targets missed their threshold" in md
    assert "1 of 8 targets could not be scanned" in md
    assert f"| {RUN_ID} | {PROFILE} | submit | 2026-03-01T10:15:00Z |" in md
    assert "| 8 | 7 | 4 | 3 | 1 |" in md
    assert f"**Compliance: {full_run['compliance']}%**" in md
    failed = full_run["counts"]["failed"]
    assert f"| Failed | {failed['total']} | {failed['critical']} | {failed['high']} |" in md
    for ctx, g in full_run["by_cluster"].items():
        t = g["targets"]
        assert f"| {ctx} | {t['total']} | {t['passed']} | {t['failed']} | {t['error']} |" in md
    for ns in ("payments", "web", "db"):
        assert f"| {ns} | " in md
    for control in full_run["top_failing_controls"][:5]:
        assert f"| {md_cell(control['id'])} | {control['severity']} |" in md
    for ref in full_run["failing_targets"]:
        assert f"| {ref['pod']}/{ref['container']} |" in md
        for failure in ref["failures"]:
            assert md_cell(failure) in md
    assert "| backup-cron/app | timeout |" in md
    assert "targets.error.max" in md  # the fleet threshold failure
    assert "**Not met:**" in md


def test_markdown_cells_cannot_break_the_table_or_inject_html(full_run: dict[str, Any]) -> None:
    md = render("markdown", full_run)
    assert "<script>" not in md
    assert "auditor killed after 1800s \\| exit 137 &lt;script&gt;" in md
    for table in _table_rows(md):
        widths = {len(re.split(r"(?<!\\)\|", line)) for line in table}
        assert len(widths) == 1, table


def test_md_cell_escapes_pipes_newlines_and_markup() -> None:
    assert md_cell("a|b\r\nc\nd<e>&`f`") == "a\\|b<br>c<br>d&lt;e&gt;&amp;\\`f\\`"
    assert md_cell(None) == ""


@pytest.mark.parametrize(
    ("specs", "word", "code"),
    [(PASSING, "PASS", 0), (WITH_ERROR, "ERROR", 3)],
)
def test_markdown_verdict_for_pass_and_error_runs(
    results: Path, specs: list[Spec], word: str, code: int
) -> None:
    run = write_run(results, specs)
    md = render("markdown", run)
    assert f"**{word}**" in md.splitlines()[0]
    assert f"Exit code {code}." in md
    assert "No fleet threshold was applied." in md
    assert ("Targets that could not be scanned" in md) is (code == 3)
    assert "Targets that missed their threshold" not in md


# --- junit ------------------------------------------------------------------------------


def test_schema_validation_can_fail() -> None:
    from lxml import etree

    with pytest.raises(etree.DocumentInvalid):
        validate_junit('<testsuites><testsuite name="x"><testcase/></testsuite></testsuites>')


def test_junit_is_valid_with_a_suite_per_cluster(results: Path, full_run: dict[str, Any]) -> None:
    root = validate_junit(render("junit", full_run, summaries_of(results)))
    t = full_run["targets"]
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == (
        str(t["total"]),
        str(t["failed"]),
        str(t["error"]),
    )
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == set(full_run["by_cluster"]) == {"prod-east", "prod-west"}
    for ctx, suite in suites.items():
        g = full_run["by_cluster"][ctx]["targets"]
        cases = suite.findall("testcase")
        assert int(suite.get("tests", "")) == len(cases) == g["total"]
        assert (
            int(suite.get("failures", "")) == len(suite.findall("testcase/failure")) == g["failed"]
        )
        assert int(suite.get("errors", "")) == len(suite.findall("testcase/error")) == g["error"]
        assert suite.get("skipped") == "0"
        assert float(suite.get("time", "")) == pytest.approx(
            sum(float(c.get("time", "")) for c in cases)
        )
        assert all(c.get("classname", "").startswith(f"{ctx}.") for c in cases)
        props = {p.get("name"): p.get("value") for p in suite.iter("property")}
        assert props == {"run_id": RUN_ID, "profile": PROFILE, "source": "submit"}
    assert len(root.findall(".//failure")) == t["failed"]
    assert len(root.findall(".//error")) == t["error"]


def test_junit_testcases_carry_failures_errors_and_coverage(
    results: Path, full_run: dict[str, Any]
) -> None:
    root = validate_junit(render("junit", full_run, summaries_of(results)))
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert len(cases) == 8
    api = cases["api-7d9f/app"]
    assert api.get("classname") == "prod-east.payments"
    assert api.get("time") == "60.000"
    failure = api.find("failure")
    assert failure is not None
    ref = next(f for f in full_run["failing_targets"] if f["pod"] == "api-7d9f")
    assert len(ref["failures"]) == 2
    for text in ref["failures"]:
        assert text in failure.get("message", "")
        assert text in (failure.text or "")
    error = cases["backup-cron/app"].find("error")
    assert error is not None
    assert error.get("type") == "timeout"
    # the escape character cannot be carried by XML 1.0; everything else survives
    assert error.get("message") == HOSTILE.replace("\x1b[31m", "")
    covered = cases["worker-9x1z/app"]
    assert covered.find("failure") is None
    assert covered.find("error") is None
    assert f"covered by scan {scan_id(FULL[1])}" in (covered.findtext("system-out") or "")
    passed = cases["frontend-6f4d/nginx"]
    assert list(passed) == [passed.find("system-out")]
    assert "compliance 75%" in (passed.findtext("system-out") or "")


# --- html -------------------------------------------------------------------------------


def own_scripts_only(page: str) -> None:
    """The page runs one script, its own, allowed by its sha256 in the CSP; the two other
    <script> elements are JSON data, which no browser runs."""
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page, re.DOTALL | re.IGNORECASE)
    assert len(scripts) == page.lower().count("<script") == 3
    data = [body for attrs, body in scripts if attrs.strip().startswith('type="application/json"')]
    assert len(data) == 2
    for body in data:
        json.loads(body)
        assert "<" not in body
    [(_attrs, code)] = [(a, b) for a, b in scripts if not a.strip()]
    digest = base64.b64encode(hashlib.sha256(code.encode()).digest()).decode()
    [csp] = re.findall(r'Content-Security-Policy" content="([^"]*)"', page)
    assert csp == (f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{digest}'")


def test_html_is_self_contained_and_escaped(results: Path, full_run: dict[str, Any]) -> None:
    page = render("html", full_run, summaries_of(results))
    assert page.startswith("<!DOCTYPE html>")
    assert not NETWORK_REF.search(page)
    own_scripts_only(page)
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp;" in page
    assert PROFILE in page  # a URL as text is fine; as a resource it is not
    assert page.count("<svg") == 3


def test_html_shows_verdict_facts_and_targets(full_run: dict[str, Any]) -> None:
    page = render("html", full_run)
    assert '<div class="badge">FAIL</div>' in page
    assert f"<title>scanfleet run {RUN_ID}: FAIL</title>" in page
    assert "12m 41s" in page
    for ref in full_run["failing_targets"]:
        assert f"{ref['pod']}/{ref['container']}" in page
        for failure in ref["failures"]:
            assert failure.replace("'", "&#x27;") in page
    assert "<code>timeout</code>" in page
    for failure in full_run["fleet_threshold"]["failures"]:
        assert failure in page
    for ctx, g in full_run["by_cluster"].items():
        assert f"<title>{ctx}: {g['compliance']}%" in page
    for control in full_run["top_failing_controls"]:
        assert f"<code>{control['id']}</code>" in page


@pytest.mark.parametrize(("specs", "word"), [(PASSING, "PASS"), (WITH_ERROR, "ERROR")])
def test_html_verdict_for_pass_and_error_runs(results: Path, specs: list[Spec], word: str) -> None:
    page = render("html", write_run(results, specs))
    assert f'<div class="badge">{word}</div>' in page
    assert ("Targets that could not be scanned" in page) is (word == "ERROR")


def test_unknown_format_is_refused(full_run: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="unknown report format 'pdf'"):
        render("pdf", full_run)


@pytest.fixture
def results(tmp_path: Path) -> Path:
    out = tmp_path / "results"
    run_dir(out, RUN_ID).mkdir(parents=True)
    return out
