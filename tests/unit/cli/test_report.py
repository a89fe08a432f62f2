"""`scanfleet report`: formats, output files, exit codes, and the HTML page in a real browser.

Runs are built from the real sample reports by test_reports.write_run and read back from a
results directory, as `report` does after `submit --wait` or `scan`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import scanfleet.cli.report as _report  # noqa: F401  (registers the command)
from scanfleet.cli.common import main_group
from scanfleet.store.files import run_dir
from tests.support.report_runs import (
    FAILING,
    FULL,
    HOSTILE,
    NETWORK_REF,
    PASSING,
    RUN_ID,
    WITH_ERROR,
    validate_junit,
    write_run,
)
from tests.support.tools import require_tool


@pytest.fixture
def results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    out = tmp_path / "results"
    run_dir(out, RUN_ID).mkdir(parents=True)
    monkeypatch.setenv("SCANFLEET_RESULTS_DIR", str(out))
    monkeypatch.setenv("SCANFLEET_LOG_FORMAT", "console")
    return out


@pytest.fixture
def full_run(results: Path) -> dict[str, Any]:
    return write_run(results, FULL, fleet="targets: {error: {max: 0}}")


def report(*args: str) -> Result:
    return CliRunner().invoke(main_group, ["report", *args], catch_exceptions=False)


@pytest.mark.parametrize("fmt", ["json", "markdown", "junit", "html"])
def test_every_format_writes_its_file_and_exits_with_the_runs_code(
    full_run: dict[str, Any], tmp_path: Path, fmt: str
) -> None:
    out = tmp_path / "reports" / f"report.{fmt}"
    r = report(RUN_ID, "--format", fmt, "--output", str(out))
    assert r.exit_code == full_run["exit_code"] == 1, r.stderr
    assert r.stdout == ""
    text = out.read_text(encoding="utf-8")
    assert RUN_ID in text
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp file left


def test_json_is_the_default_and_goes_to_stdout(full_run: dict[str, Any]) -> None:
    r = report(RUN_ID)
    assert r.exit_code == 1
    data = json.loads(r.stdout)
    assert len(data.pop("targets_detail")) == data["targets"]["total"] == 8
    assert data == full_run


def test_markdown_to_stdout_names_failures_and_errors(full_run: dict[str, Any]) -> None:
    r = report(RUN_ID, "--format", "markdown", "--output", "-")
    assert r.exit_code == 1
    assert "**FAIL**" in r.stdout.splitlines()[0]
    for pod in FAILING:
        assert f"| {pod}/" in r.stdout
    assert "compliance.min: compliance 5%, at least 30% required" in r.stdout
    assert "| timeout |" in r.stdout


def test_junit_through_a_real_process_validates(full_run: dict[str, Any], results: Path) -> None:
    env = {**os.environ, "SCANFLEET_RESULTS_DIR": str(results)}
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            "from scanfleet.cli import main; main()",
            "report",
            RUN_ID,
            "--format",
            "junit",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert p.returncode == 1, p.stderr
    root = validate_junit(p.stdout)
    assert {s.get("name") for s in root.iter("testsuite")} == {"prod-east", "prod-west"}
    assert root.get("failures") == "3"
    assert root.get("errors") == "1"
    error = root.find(".//error")
    assert error is not None
    assert error.get("type") == "timeout"
    assert error.get("message") == HOSTILE.replace("\x1b[31m", "")


@pytest.mark.parametrize(("specs", "code"), [(PASSING, 0), (WITH_ERROR, 3), (FULL, 1)])
def test_exit_code_is_the_runs(results: Path, specs: list[Any], code: int) -> None:
    run = write_run(results, specs)
    assert run["exit_code"] == code
    for fmt in ("json", "markdown", "junit", "html"):
        assert report(RUN_ID, "--format", fmt).exit_code == code


def test_results_dir_option_overrides_the_environment(
    full_run: dict[str, Any], results: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SCANFLEET_RESULTS_DIR", str(tmp_path / "elsewhere"))
    assert report(RUN_ID).exit_code == 2
    r = report(RUN_ID, "--results-dir", str(results), "--format", "markdown")
    assert r.exit_code == 1
    assert RUN_ID in r.stdout


@pytest.mark.parametrize(
    ("run_id", "message"),
    [
        ("not-a-run", "invalid run id 'not-a-run'"),
        ("../20260301T101500Z-a1b2c3", "invalid run id"),
        ("20260301T101500Z-ffffff", "unknown run '20260301T101500Z-ffffff'"),
    ],
)
def test_bad_or_unknown_run_id_exits_2_writing_nothing(
    full_run: dict[str, Any], tmp_path: Path, run_id: str, message: str
) -> None:
    out = tmp_path / "report.md"
    r = report(run_id, "--format", "markdown", "--output", str(out))
    assert r.exit_code == 2
    assert message in r.stderr
    assert r.stdout == ""
    assert not out.exists()


def test_unfinished_run_exits_2_saying_so(results: Path, tmp_path: Path) -> None:
    write_run(results, FULL, finished=False)  # summaries on disk, no run.json yet
    out = tmp_path / "report.xml"
    r = report(RUN_ID, "--format", "junit", "--output", str(out))
    assert r.exit_code == 2
    assert f"run '{RUN_ID}' has not finished" in r.stderr
    assert "still in progress" in r.stderr
    assert not out.exists()


def test_malformed_run_json_exits_2(results: Path) -> None:
    (run_dir(results, RUN_ID) / "run.json").write_text('{"run_id": "x"')
    r = report(RUN_ID)
    assert r.exit_code == 2
    assert "cannot read" in r.stderr


def test_unreadable_summary_is_reported_as_an_error_target(
    full_run: dict[str, Any], results: Path
) -> None:
    (run_dir(results, RUN_ID) / "0000deadbeef0000.json").write_text("{not json")
    r = report(RUN_ID, "--format", "junit")
    assert r.exit_code == 1
    root = validate_junit(r.stdout)
    errors = [e for e in root.iter("error") if e.get("type") == "invalid_report"]
    assert len(errors) == 1
    assert "0000deadbeef0000.json is unreadable" in (errors[0].get("message") or "")


def test_a_sweep_runs_drift_json_is_not_a_target(full_run: dict[str, Any], results: Path) -> None:
    (run_dir(results, RUN_ID) / "drift.json").write_text('{"run_a": null, "changed": []}')
    r = report(RUN_ID)
    assert r.exit_code == 1
    assert len(json.loads(r.stdout)["targets_detail"]) == full_run["targets"]["total"] == 8


def test_format_is_checked(full_run: dict[str, Any]) -> None:
    r = report(RUN_ID, "--format", "pdf")
    assert r.exit_code == 2
    assert "'pdf' is not one of" in r.stderr


# --- the HTML page in headless Chromium -------------------------------------------------


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            require_tool("chromium", "chromium-browser"),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


@pytest.mark.timeout(240)
def test_html_renders_in_chromium_without_console_errors(
    full_run: dict[str, Any], tmp_path: Path
) -> None:
    from PIL import Image

    page = tmp_path / "report.html"
    assert report(RUN_ID, "--format", "html", "--output", str(page)).exit_code == 1
    html = page.read_text(encoding="utf-8")
    assert not NETWORK_REF.search(html)
    assert not re.search(r"https?://", re.sub(r">[^<]*<", "><", html))  # only in text nodes

    png = tmp_path / "report.png"
    shot = chromium(
        tmp_path / "profile", f"--screenshot={png}", "--window-size=1366,900", page.as_uri()
    )
    assert shot.returncode == 0, shot.stderr[-2000:]
    dom = chromium(tmp_path / "profile", "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    for log in (shot.stderr, dom.stderr):
        console = [line for line in log.splitlines() if "CONSOLE" in line]
        assert console == [], console
    assert '<div class="badge">FAIL</div>' in dom.stdout
    assert "backup-cron/app" in dom.stdout

    with Image.open(png) as img:
        assert img.size == (1366, 900)
        rgb = img.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20) or []
        assert len(colours) > 50  # text, bars and cards, not a blank page
        # the FAIL banner is drawn: its red fills a good part of the top of the page
        top = rgb.crop((0, 0, 1366, 150)).getcolors(maxcolors=1 << 20) or []
        red = sum(n for n, c in top if c == (0xB9, 0x1C, 0x1C))
        assert red > 1366 * 150 // 4
