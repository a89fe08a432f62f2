"""`markdown` report: a CI job summary or ticket, from run.json alone.

Every cell is escaped (`md_cell`): cluster and auditor text can never break the table or
inject HTML. The whole report stays under MAX_CHARS (GitHub's limit for an issue or pull
request comment body is 65,536 characters; GitLab's note limit is larger): the failing
targets table, the one section that grows with the run, is cut to fit and says so.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

from scanfleet.judging.report import SEVERITIES, STATUSES
from scanfleet.reports.common import (
    STATUS_LABELS,
    clean_text,
    error_of,
    headline,
    target_name,
    verdict,
)

# Markdown that would turn text into a link, an image, a mention or emphasis.
_MD_INLINE = str.maketrans(
    {
        "[": "\\[",
        "]": "\\]",
        "(": "\\(",
        ")": "\\)",
        "!": "\\!",
        "*": "\\*",
        "_": "\\_",
        "~": "\\~",
        "@": "&#64;",
        "#": "&#35;",
    }
)


MAX_CHARS = 60_000
"""Budget for the whole report: GitHub's 65,536-character comment limit, with room to spare
for a CI job's own header around it."""
CONTROLS_PER_TARGET = 10
"""Failed controls named per failing target (run.json keeps up to 20)."""
MAX_TITLE = 80


def md_cell(value: object) -> str:
    """Text safe inside a GitHub/GitLab table cell: no raw HTML, pipes or line breaks."""
    text = clean_text(value)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`")
    text = text.translate(_MD_INLINE)
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


def _clip(text: object, n: int) -> str:
    s = clean_text(text)
    return s if len(s) <= n else s[: n - 1] + "…"


def _controls_cell(ref: Mapping[str, Any]) -> str:
    """`ID title` per failed control, one a line, the first CONTROLS_PER_TARGET."""
    found = [c for c in ref.get("failed_controls") or [] if isinstance(c, Mapping)]
    total = ref.get("failed_controls_total")
    total = total if isinstance(total, int) else len(found)
    lines = [
        f"{c.get('id')} ({c.get('severity')})"
        + (f" {_clip(c.get('title'), MAX_TITLE)}" if c.get("title") else "")
        for c in found[:CONTROLS_PER_TARGET]
    ]
    if total > len(lines):
        lines.append(f"… and {total - len(lines)} more")
    return "\n".join(lines)


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
        f"**Compliance: {md_cell(run.get('compliance', 0))}%** (controls passed out of passed, "
        "failed, not reviewed and error, over all completed targets)",
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
            ["Control", "Severity", "Title", "Targets failing", "Images failing"],
            [
                [
                    c.get("id"),
                    c.get("severity"),
                    _clip(c.get("title") or "", MAX_TITLE),
                    c.get("targets"),
                    c.get("images", ""),
                ]
                for c in top
            ],
        )
    tail: list[str] = []
    errors = run.get("error_targets") or []
    if errors:
        tail += ["### Targets that could not be scanned", ""]
        tail += _shown(len(errors), t.get("error", 0), "error targets")
        tail += _md_table(
            ["Cluster", "Namespace", "Pod/container", "Error", "Message"],
            [[e.get("context"), e.get("namespace"), target_name(e), *error_of(e)] for e in errors],
        )
    fleet = run.get("fleet_threshold") or {}
    tail += ["### Fleet threshold", ""]
    if fleet.get("passed") is None:
        tail += ["No fleet threshold was applied.", ""]
    elif fleet.get("passed"):
        tail += ["Met.", ""]
    else:
        tail += ["**Not met:**", ""]
        tail += [f"- {md_cell(f)}" for f in fleet.get("failures") or []]
        tail += [""]
    failing = run.get("failing_targets") or []
    if failing:
        used = sum(len(x) + 1 for x in (*lines, *tail)) + 400  # headings and the note
        table = _md_table(
            ["Cluster", "Namespace", "Pod/container", "Threshold failures", "Failed controls"],
            [
                [
                    f.get("context"),
                    f.get("namespace"),
                    target_name(f),
                    _lines(f.get("failures")),
                    _controls_cell(f),
                ]
                for f in failing
            ],
        )
        rows = table[2:-1]
        fit = 0
        for row in rows:
            if used + len(row) + 1 > MAX_CHARS:
                break
            used += len(row) + 1
            fit += 1
        lines += ["### Targets that missed their threshold", ""]
        if fit < len(rows):
            lines += [
                f"_Showing {fit} of {t.get('failed', 0)} failing targets: this report is kept "
                f"under {MAX_CHARS:,} characters (GitHub's comment limit is 65,536); the html "
                "and json reports list them all._",
                "",
            ]
        else:
            lines += _shown(len(failing), t.get("failed", 0), "failing targets")
        lines += [*table[:2], *rows[:fit], ""]
    out.write("\n".join([*lines, *tail]))
