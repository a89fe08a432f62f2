"""Output that cannot be hijacked: escape sequences, C1 and bidi controls are stripped in
every human format (terminal, Markdown, HTML, JUnit); JSON keeps the text but escapes it;
Markdown escapes link, image and mention syntax everywhere, `compliance` included."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from scanfleet.cli.scan import print_run
from scanfleet.core.logs import redact_text
from scanfleet.core.targets import Target
from scanfleet.judging.aggregate import MAX_ERROR_LINE, Aggregator
from scanfleet.reports.markdown import md_cell
from scanfleet.runs.pipeline import error_result
from tests.support.report_runs import render

ESC = "\x1b[2J\x1b]0;pwned\x07\x1b]8;;https://evil.example\x07click\x1b]8;;\x07"
BIDI = "admin\u202euser\u2066x\u2069"
C1 = "a\x9b31mb\x85c"
MD = "[click](https://evil.example) ![img](https://evil.example/t.png) @everyone"
HOSTILE = f"{ESC} {BIDI} {C1} {MD}\nresults: forged  exit code: 0"
FORBIDDEN = ("\x1b", "\u202e", "\u2066", "\u2069", "\x9b", "\x85", "\x07")


def hostile_summary() -> dict[str, Any]:
    return dict(
        error_result(
            "20260301T101500Z-a1b2c3",
            Target("east", "apps", "web", "app"),
            {"kind": "auditor_exit", "message": HOSTILE},
            datetime(2026, 3, 1, tzinfo=UTC),
        )
    )


def hostile_run() -> dict[str, Any]:
    target = Target("east", "apps", "web", "app")
    now = datetime(2026, 3, 1, tzinfo=UTC)
    run_id = "20260301T101500Z-a1b2c3"
    summary = error_result(run_id, target, {"kind": "auditor_exit", "message": HOSTILE}, now)
    agg = Aggregator()
    agg.add(summary)
    run = {
        "run_id": run_id,
        "source": "submit",
        "profile": f"/p/{MD}",
        "created_at": "2026-03-01T10:15:00Z",
        "finished_at": "2026-03-01T10:16:00Z",
        **agg.result(None),
    }
    run["compliance"] = f"50 {MD} {ESC}"
    run["failing_targets"] = [{**target.to_dict(), "failures": [HOSTILE]}]
    return run


@pytest.mark.parametrize("fmt", ["markdown", "html", "junit"])
def test_human_formats_strip_escapes_c1_and_bidi(fmt: str) -> None:
    out = render(fmt, hostile_run(), lambda: [hostile_summary()])
    for ch in FORBIDDEN:
        assert ch not in out, f"{ch!r} in {fmt}"
    assert "click" in out  # the text itself survives


def test_json_keeps_the_text_but_escapes_every_control() -> None:
    run = hostile_run()
    out = render("json", run, lambda: [hostile_summary()])
    for ch in FORBIDDEN:
        assert ch not in out
    doc = json.loads(out)
    # The summary keeps the text, with controls stripped before redaction (a token split by
    # an escape sequence is still found): the same text every result file holds.
    kept = doc["targets_detail"][0]["error"]["message"]
    assert kept == redact_text(HOSTILE)
    assert "click" in kept
    assert "forged" in kept
    # run.json's error_targets: the kind and a short first line, sanitized.
    line = doc["error_targets"][0]["error"]["message"]
    assert "click" in line
    assert "\n" not in line
    assert "forged" not in line
    assert len(line) <= MAX_ERROR_LINE


def test_markdown_has_no_links_images_or_mentions_anywhere() -> None:
    md = render("markdown", hostile_run(), lambda: ())
    assert "](https://evil" not in md
    assert "![" not in md
    assert "@everyone" not in md
    assert "\\[click\\]" in md
    assert "**Compliance: 50 \\[click\\]" in md
    assert md_cell("@x [a](b)") == "&#64;x \\[a\\]\\(b\\)"


def test_terminal_output_strips_controls_and_cannot_forge_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    print_run(hostile_run(), False)
    out = capsys.readouterr().out
    for ch in FORBIDDEN:
        assert ch not in out
    lines = out.splitlines()
    assert [ln for ln in lines if ln.startswith("results:")] == [lines[-1]]
    assert "click" in out
