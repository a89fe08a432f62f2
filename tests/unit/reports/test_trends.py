"""`report --sweep NAME`: a sweep's five runs as a trend page (in Chromium) and JSON series."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import scanfleet.cli.report as _report  # noqa: F401  (registers the command)
from scanfleet.cli.common import main_group
from scanfleet.judging.documents import failed_controls_of, outcome
from scanfleet.judging.report import SEVERITIES
from scanfleet.store.files import iter_summaries, run_dir
from tests.support.bigrun import write_big_run
from tests.support.browser import Browser

# (run id, targets, sample offset): the last two runs scan disjoint samples, so controls
# both newly fail and get fixed between them.
RUNS = [
    ("20260301T020000Z-000001", 12, 0),
    ("20260302T020000Z-000002", 10, 0),
    ("20260303T020000Z-000003", 8, 0),
    ("20260304T020000Z-000004", 3, 0),
    ("20260305T020000Z-000005", 3, 3),
]


@pytest.fixture(scope="module")
def sweep_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    results = tmp_path_factory.mktemp("results")
    runs = [
        write_big_run(results, n, run_id, offset=offset, source="sweep:nightly")
        for run_id, n, offset in RUNS
    ]
    # other runs in the same directory: another sweep's and a plain submit
    write_big_run(results, 2, "20260306T020000Z-00000a", source="sweep:other")
    write_big_run(results, 2, "20260306T030000Z-00000b")
    return results, runs


def report(*args: str) -> Result:
    return CliRunner().invoke(main_group, ["report", *args], catch_exceptions=False)


def failed_ids(results: Path, run_id: str) -> set[str]:
    return {
        c["id"]
        for s in iter_summaries(run_dir(results, run_id))
        if outcome(s) != "error"
        for c in failed_controls_of(s)
    }


def test_json_series_of_a_sweeps_last_runs(sweep_results: Any) -> None:
    results, runs = sweep_results
    r = report("--sweep", "nightly", "--results-dir", str(results), "--format", "json")
    assert r.exit_code == runs[-1]["exit_code"], r.stderr
    data = json.loads(r.stdout)
    assert data["sweep"] == "nightly"
    assert [s["run_id"] for s in data["runs"]] == [run_id for run_id, _, _ in RUNS]
    assert [s["compliance"] for s in data["runs"]] == [run["compliance"] for run in runs]
    assert data["clusters"] == ["cluster-0", "cluster-1", "cluster-2"]
    for s, run in zip(data["runs"], runs, strict=True):
        assert s["by_cluster"] == {
            c: run["by_cluster"][c]["compliance"] if c in run["by_cluster"] else None
            for c in data["clusters"]
        }
    before, last = (failed_ids(results, RUNS[i][0]) for i in (-2, -1))
    changes = data["changes"]
    assert (changes["from"], changes["to"]) == (RUNS[-2][0], RUNS[-1][0])
    assert {c["id"] for c in changes["newly_failing"]} == last - before
    assert {c["id"] for c in changes["fixed"]} == before - last
    assert changes["newly_failing"]
    assert changes["fixed"]
    sv = next(c for c in changes["newly_failing"] if c["id"] == "SV-230222")
    assert sv["title"].startswith("RHEL 8 vendor packaged system security patches")
    heat = data["heatmap"]
    assert heat["run_id"] == RUNS[-1][0]
    assert heat["failed"] == {
        ns: {sev: g["counts"]["failed"][sev] for sev in SEVERITIES}
        for ns, g in runs[-1]["by_namespace"].items()
    }

    r = report(
        "--sweep", "nightly", "--last", "2", "--results-dir", str(results), "--format", "json"
    )
    assert [s["run_id"] for s in json.loads(r.stdout)["runs"]] == [RUNS[-2][0], RUNS[-1][0]]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sweep", "nope", "--format", "json"], "no finished run of sweep 'nope'"),
        (["--sweep", "nightly", "--format", "junit"], "trends as html or json, not junit"),
        (["--format", "json"], "give a RUN_ID or --sweep NAME"),
        (["20260301T020000Z-000001", "--sweep", "nightly"], "give a RUN_ID or --sweep NAME"),
    ],
)
def test_bad_trend_requests_exit_2(sweep_results: Any, args: list[str], message: str) -> None:
    results, _ = sweep_results
    r = report(*args, "--results-dir", str(results))
    assert r.exit_code == 2
    assert message in r.stderr
    assert r.stdout == ""


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    b = Browser(tmp_path_factory.mktemp("chromium"), 1366, 900)
    try:
        yield b
    finally:
        b.close()


@pytest.mark.timeout(180)
def test_trend_page_renders_in_chromium(
    sweep_results: Any, browser: Browser, tmp_path: Path
) -> None:
    results, runs = sweep_results
    page = tmp_path / "trend.html"
    r = report(
        "--sweep", "nightly", "--results-dir", str(results), "--format", "html",
        "--output", str(page),
    )  # fmt: skip
    assert r.exit_code == runs[-1]["exit_code"], r.stderr
    html = page.read_text()
    assert "<script" not in html.lower()
    assert "default-src 'none'" in html
    browser.console.clear()
    browser.open(page.as_uri())
    assert browser.console == []
    lines = browser.js(
        """Array.from(document.querySelectorAll('#trend-chart polyline.series')).map(p =>
             [p.dataset.series, p.points.numberOfItems, p.getBBox().width])"""
    )
    assert [name for name, _, _ in lines] == ["all clusters", "cluster-0", "cluster-1", "cluster-2"]
    assert lines[0][1] == 5  # one point per run
    assert all(width > 100 for _, _, width in lines[:1])  # drawn across the chart
    cells = browser.js(
        """Array.from(document.querySelectorAll('#heatmap rect.cell')).map(c =>
             [c.dataset.namespace, c.dataset.severity, +c.dataset.failed])"""
    )
    expected = [
        [ns, sev, g["counts"]["failed"][sev]]
        for ns, g in runs[-1]["by_namespace"].items()
        for sev in SEVERITIES
    ]
    assert cells == expected
    newly = browser.js("document.getElementById('newly-failing').textContent")
    fixed = browser.js("document.getElementById('fixed').textContent")
    before, last = (failed_ids(results, RUNS[i][0]) for i in (-2, -1))
    for cid in last - before:
        assert cid in newly
    for cid in before - last:
        assert cid in fixed
    rows = browser.js("document.querySelectorAll('#runs tr').length")
    assert rows == 1 + len(RUNS)
