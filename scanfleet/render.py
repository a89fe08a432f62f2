"""Run reports: a run summary (run.json) and its target summaries rendered for people and CI.

Formats: `json` (run.json plus every target summary), `markdown` (a ticket or CI job
summary), `junit` (one testsuite per cluster, one testcase per target) and `html` (one
self-contained page, see `render_html`). Writers take an output stream and write as they
go; target summaries come from a zero-argument callable returning a fresh iterable, so a
10k-target run is never held in memory (junit makes one pass per cluster instead).
Markdown and html need only run.json: its failing/error target lists are already bounded.

Pure: no file or network I/O, no environment, no logging configuration. All text that
came from a cluster, a profile or an auditor is escaped for the format it lands in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from io import StringIO
from typing import Any, TextIO

from scanfleet.errors import ExitCode
from scanfleet.inspec import SEVERITIES, STATUSES

FORMATS = ("json", "markdown", "junit", "html")
Summaries = Callable[[], Iterable[Mapping[str, Any]]]

VERDICTS = {ExitCode.OK: "PASS", ExitCode.THRESHOLD: "FAIL", ExitCode.SCAN_ERROR: "ERROR"}
STATUS_LABELS = {
    "passed": "Passed",
    "failed": "Failed",
    "skipped": "Not reviewed",
    "no_impact": "Not applicable",
    "error": "Error",
}
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def verdict(run: Mapping[str, Any]) -> str:
    """PASS / FAIL / ERROR from run.json's exit code (SPEC §5)."""
    return VERDICTS.get(run.get("exit_code"), "UNKNOWN")  # type: ignore[arg-type]


def reason(run: Mapping[str, Any]) -> str:
    """One sentence saying why the verdict is what it is."""
    t = run.get("targets") or {}
    fleet = run.get("fleet_threshold") or {}
    parts = []
    if t.get("failed"):
        parts.append(
            f"{t['failed']} of {t.get('completed', 0)} scanned targets missed their threshold"
        )
    if fleet.get("passed") is False:
        parts.append("the fleet threshold was not met")
    if t.get("error"):
        parts.append(f"{t['error']} of {t.get('total', 0)} targets could not be scanned")
    if not parts:
        return f"all {t.get('total', 0)} targets scanned and every applied threshold met"
    return "; ".join(parts)


def headline(run: Mapping[str, Any]) -> str:
    """`reason` as a sentence, with the exit code."""
    why = reason(run)
    return f"{why[:1].upper()}{why[1:]}. Exit code {run.get('exit_code')}."


def target_name(ref: Mapping[str, Any]) -> str:
    """`pod/container`; `pod/*` for a pod whose containers were never listed."""
    return f"{ref.get('pod') or '?'}/{ref.get('container') or '*'}"


def target_ref(ref: Mapping[str, Any]) -> str:
    return f"{ref.get('context') or '?'}:{ref.get('namespace') or '?'}/{target_name(ref)}"


def error_of(ref: Mapping[str, Any]) -> tuple[str, str]:
    """(kind, message) of an error target ref (run.json nests it under `error`)."""
    err = ref.get("error")
    src = err if isinstance(err, Mapping) else ref
    return str(src.get("kind") or "unknown"), str(src.get("message") or "")


# --- json -------------------------------------------------------------------------------


def write_json(run: Mapping[str, Any], summaries: Summaries, out: TextIO) -> None:
    """run.json with `targets_detail`: the target summaries, streamed one at a time."""
    out.write("{\n")
    for key, value in run.items():
        if key != "targets_detail":
            out.write(f"  {json.dumps(key)}: {_indented(value, 2)},\n")
    out.write('  "targets_detail": [')
    first = True
    for summary in summaries():
        out.write("\n    " if first else ",\n    ")
        out.write(_indented(summary, 4))
        first = False
    out.write("]\n}\n" if first else "\n  ]\n}\n")


def _indented(value: Any, indent: int) -> str:
    return json.dumps(value, indent=2).replace("\n", "\n" + " " * indent)


# --- markdown ---------------------------------------------------------------------------


def clean_text(value: object) -> str:
    """Text without the control characters XML 1.0 cannot carry and terminals act on."""
    return _XML_ILLEGAL.sub("\ufffd", "" if value is None else str(value))


def md_cell(value: object) -> str:
    """Text safe inside a GitHub/GitLab table cell: no raw HTML, pipes or line breaks."""
    text = clean_text(value)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`")
    return re.sub(r"\r\n|\r|\n", "<br>", text)


def _md_table(header: Iterable[str], rows: Iterable[Iterable[object]]) -> list[str]:
    head = list(header)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def _group_rows(groups: Mapping[str, Any]) -> list[list[object]]:
    rows = []
    for name, g in groups.items():
        t, c = g.get("targets", {}), g.get("counts", {})
        failed_controls = (c.get("failed") or {}).get("total", 0)
        rows.append(
            [
                name or "(none)",
                t.get("total", 0),
                t.get("passed", 0),
                t.get("failed", 0),
                t.get("error", 0),
                f"{g.get('compliance', 0)}%",
                failed_controls,
            ]
        )
    return rows


def _lines(items: object) -> str:
    return "\n".join(str(x) for x in items) if isinstance(items, list) else ""


def _shown(listed: int, total: int, what: str) -> list[str]:
    return [f"_Showing the first {listed} of {total} {what}._", ""] if total > listed else []


def write_markdown(run: Mapping[str, Any], out: TextIO) -> None:
    """A job summary / ticket body: verdict first, then the numbers behind it."""
    t = run.get("targets") or {}
    lines = [
        f"## scanfleet run `{md_cell(run.get('run_id'))}`: **{verdict(run)}**",
        "",
        md_cell(headline(run)),
        "",
        *_md_table(
            ["Run", "Profile", "Source", "Created", "Finished"],
            [[run.get(k) for k in ("run_id", "profile", "source", "created_at", "finished_at")]],
        ),
        "### Targets",
        "",
        *_md_table(
            ["Total", "Completed", "Met threshold", "Missed threshold", "Scan errors"],
            [[t.get(k, 0) for k in ("total", "completed", "passed", "failed", "error")]],
        ),
        f"**Compliance: {run.get('compliance', 0)}%** (controls passed out of passed, failed, "
        "not reviewed and error, over all completed targets)",
        "",
        "### Controls by status and severity",
        "",
    ]
    counts = run.get("counts") or {}
    lines += _md_table(
        ["Status", "Total", *(s.capitalize() for s in SEVERITIES)],
        [
            [STATUS_LABELS[s], *((counts.get(s) or {}).get(k, 0) for k in ("total", *SEVERITIES))]
            for s in STATUSES
        ],
    )
    group_head = ["Targets", "Met", "Missed", "Errors", "Compliance", "Failed controls"]
    for title, key in (("cluster", "by_cluster"), ("namespace", "by_namespace")):
        groups = run.get(key) or {}
        if groups:
            lines += [f"### By {title}", ""]
            lines += _md_table([title.capitalize(), *group_head], _group_rows(groups))
    top = run.get("top_failing_controls") or []
    if top:
        lines += ["### Top failing controls", ""]
        lines += _md_table(
            ["Control", "Severity", "Targets failing"],
            [[c.get("id"), c.get("severity"), c.get("targets")] for c in top],
        )
    failing = run.get("failing_targets") or []
    if failing:
        lines += ["### Targets that missed their threshold", ""]
        lines += _shown(len(failing), t.get("failed", 0), "failing targets")
        lines += _md_table(
            ["Cluster", "Namespace", "Pod/container", "Threshold failures"],
            [
                [f.get("context"), f.get("namespace"), target_name(f), _lines(f.get("failures"))]
                for f in failing
            ],
        )
    errors = run.get("error_targets") or []
    if errors:
        lines += ["### Targets that could not be scanned", ""]
        lines += _shown(len(errors), t.get("error", 0), "error targets")
        lines += _md_table(
            ["Cluster", "Namespace", "Pod/container", "Error", "Message"],
            [[e.get("context"), e.get("namespace"), target_name(e), *error_of(e)] for e in errors],
        )
    fleet = run.get("fleet_threshold") or {}
    lines += ["### Fleet threshold", ""]
    if fleet.get("passed") is None:
        lines += ["No fleet threshold was applied.", ""]
    elif fleet.get("passed"):
        lines += ["Met.", ""]
    else:
        lines += ["**Not met:**", ""]
        lines += [f"- {md_cell(f)}" for f in fleet.get("failures") or []]
        lines += [""]
    out.write("\n".join(lines))


# --- dispatch ---------------------------------------------------------------------------


def write_report(fmt: str, run: Mapping[str, Any], summaries: Summaries, out: TextIO) -> None:
    if fmt == "json":
        write_json(run, summaries, out)
    elif fmt == "markdown":
        write_markdown(run, out)
    elif fmt == "junit":
        # imported here: render_junit imports this module's helpers
        from scanfleet.render_junit import write_junit

        write_junit(run, summaries, out)
    elif fmt == "html":
        # imported here: render_html imports this module's helpers
        from scanfleet.render_html import write_html

        write_html(run, out)
    else:
        raise ValueError(f"unknown report format {fmt!r}: expected one of {', '.join(FORMATS)}")


def render(fmt: str, run: Mapping[str, Any], summaries: Summaries = lambda: ()) -> str:
    """The whole report as one string (tests, small runs)."""
    buf = StringIO()
    write_report(fmt, run, summaries, buf)
    return buf.getvalue()
