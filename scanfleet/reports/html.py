"""The HTML run report: one self-contained page, charts drawn server-side as inline SVG.

What the page must never do: run script, fetch anything (no fonts, images, stylesheets or
links to the network: a Content-Security-Policy of `default-src 'none'` says so to the
browser too) or put unescaped text from a cluster, profile or auditor into markup. Sized
to read on a 1366x768 laptop: the verdict and the headline numbers fit above the fold.
Pure: run dict in, text out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from html import escape
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

MAX_BARS = 40
NUMERIC = frozenset({"targets failing"})
SEV_COLOURS = {
    "critical": "#7f1d1d",
    "high": "#dc2626",
    "medium": "#f97316",
    "low": "#eab308",
    "none": "#9ca3af",
}
VERDICT_COLOURS = {"PASS": "#15803d", "FAIL": "#b91c1c", "ERROR": "#b45309"}
BAR = "#2563eb"
TRACK = "#e5e7eb"

CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f3f4f6;color:#111827;
 font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1280px;margin:0 auto;padding:16px 20px 40px}
.verdict{display:flex;gap:18px;align-items:center;color:#fff;border-radius:10px;
 padding:14px 20px}
.verdict .badge{font-size:40px;font-weight:800;letter-spacing:.04em;line-height:1}
.verdict h1{margin:0;font-size:18px;font-weight:600}
.verdict p{margin:2px 0 0;font-size:14px;opacity:.95}
.verdict ul{margin:4px 0 0;padding-left:18px}
.row{display:grid;gap:14px;margin-top:14px}
.kpis{grid-template-columns:repeat(6,1fr)}
.two{grid-template-columns:1fr 1fr;align-items:start}
.col{display:grid;gap:14px}
.card{background:#fff;border-radius:10px;padding:12px 16px;box-shadow:0 1px 2px #0000001a}
.kpi .n{font-size:26px;font-weight:700}
.kpi .l{color:#4b5563;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.facts{display:grid;grid-template-columns:repeat(5,auto);gap:4px 24px;margin:0}
.facts dt{color:#4b5563;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.facts dd{margin:0;overflow-wrap:anywhere}
h2{font-size:15px;margin:0 0 8px}
.note{color:#4b5563;font-size:12px;margin:4px 0 0}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #e5e7eb;vertical-align:top;
 overflow-wrap:anywhere}
th{font-size:12px;color:#4b5563;text-transform:uppercase;letter-spacing:.04em}
td.num,th.num{text-align:right}
td ul{margin:0;padding-left:16px}
.msg{white-space:pre-wrap}
.pill{display:inline-block;border-radius:9px;padding:0 8px;color:#fff;font-size:12px}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px}
svg text{font-family:inherit}
@media (max-width:900px){.two,.kpis{grid-template-columns:1fr 1fr}}
"""


def _sev_colour(severity: object) -> str:
    return SEV_COLOURS.get(str(severity), "#6b7280")


def _t(value: object) -> str:
    return escape(clean_text(value))


def _duration(start: object, end: object) -> str:
    try:
        secs = int(
            (datetime.fromisoformat(str(end)) - datetime.fromisoformat(str(start))).total_seconds()
        )
    except ValueError:
        return ""
    h, rest = divmod(max(secs, 0), 3600)
    return f"{h}h {rest // 60}m {rest % 60}s" if h else f"{rest // 60}m {rest % 60}s"


def _count(n: int, word: str) -> str:
    plural = "" if n == 1 or word == "missed" else "s"
    return f"{n} {word}{plural}"


def _clip(label: str, n: int) -> str:
    return label if len(label) <= n else label[: n - 1] + "…"


def bar_chart(title: str, groups: Mapping[str, Any]) -> str:
    """Horizontal compliance bars, lowest first, with targets and their outcomes."""
    rows = sorted(
        groups.items(),
        key=lambda kv: (
            kv[1].get("targets", {}).get("completed", 0) > 0,
            kv[1].get("compliance", 0),
            kv[0],
        ),
    )
    shown = rows[:MAX_BARS]
    width, label_w, bar_w, row_h = 640, 160, 230, 26
    height = row_h * len(shown) + 8
    out = [f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="{_t(title)}">']
    for i, (name, g) in enumerate(shown):
        y = 4 + i * row_h
        t = g.get("targets", {})
        done = t.get("completed", 0) > 0
        comp = int(g.get("compliance", 0)) if done else 0
        label = name or "(none)"
        detail = " · ".join(
            _count(t.get(k, 0), word)
            for k, word in (("total", "target"), ("failed", "missed"), ("error", "error"))
        )
        value = f"{comp}%" if done else "n/a"
        out += [
            f"<g><title>{_t(label)}: {value}, {_t(detail)}</title>",
            f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end" font-size="13">'
            f"{_t(_clip(label, 20))}</text>",
            f'<rect x="{label_w}" y="{y + 4}" width="{bar_w}" height="16" rx="3" fill="{TRACK}"/>',
            f'<rect x="{label_w}" y="{y + 4}" width="{bar_w * comp / 100:.1f}" height="16" '
            f'rx="3" fill="{BAR}"/>',
            f'<text x="{label_w + bar_w + 8}" y="{y + 17}" font-size="13" font-weight="600">'
            f"{value}</text>",
            f'<text x="{label_w + bar_w + 50}" y="{y + 17}" font-size="12" fill="#4b5563">'
            f"{_t(detail)}</text></g>",
        ]
    out.append("</svg>")
    note = ""
    if len(rows) > len(shown):
        note = f'<p class="note">Showing the {len(shown)} lowest of {len(rows)}.</p>'
    return (
        f'<section class="card"><h2>{_t(title)}</h2>{"".join(out)}'
        f'<p class="note">Compliance of completed targets, lowest first.</p>{note}</section>'
    )


def controls_chart(counts: Mapping[str, Any]) -> str:
    """Stacked bars: one per control status, split by severity, with the numbers below."""
    totals = {s: int((counts.get(s) or {}).get("total", 0)) for s in STATUSES}
    biggest = max(totals.values()) or 1
    width, label_w, bar_w, row_h, top = 640, 120, 440, 26, 26
    height = top + row_h * len(STATUSES) + 4
    out = [
        f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" '
        'aria-label="Controls by status and severity">'
    ]
    for i, sev in enumerate(SEVERITIES):
        lx = label_w + i * 90
        out.append(
            f'<rect x="{lx}" y="4" width="12" height="12" rx="2" fill="{SEV_COLOURS[sev]}"/>'
            f'<text x="{lx + 17}" y="14" font-size="12">{sev}</text>'
        )
    for j, status in enumerate(STATUSES):
        y = top + j * row_h
        out.append(
            f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end" font-size="13">'
            f"{STATUS_LABELS[status]}</text>"
        )
        x = float(label_w)
        for sev in SEVERITIES:
            n = int((counts.get(status) or {}).get(sev, 0))
            if n:
                w = bar_w * n / biggest
                out.append(
                    f'<rect x="{x:.1f}" y="{y + 4}" width="{w:.1f}" height="16" '
                    f'fill="{SEV_COLOURS[sev]}"><title>{STATUS_LABELS[status]} · {sev}: {n}'
                    "</title></rect>"
                )
                x += w
        out.append(
            f'<text x="{x + 6:.1f}" y="{y + 17}" font-size="13" font-weight="600">'
            f"{totals[status]}</text>"
        )
    out.append("</svg>")
    head = "".join(f'<th class="num">{s}</th>' for s in ("total", *SEVERITIES))
    body = "".join(
        f"<tr><td>{STATUS_LABELS[s]}</td>"
        + "".join(
            f'<td class="num">{int((counts.get(s) or {}).get(k, 0))}</td>'
            for k in ("total", *SEVERITIES)
        )
        + "</tr>"
        for s in STATUSES
    )
    return (
        '<section class="card"><h2>Controls by status and severity</h2>'
        f"{''.join(out)}<table><tr><th>status</th>{head}</tr>{body}</table></section>"
    )


def _table(title: str, head: Iterable[str], rows: list[str], note: str = "") -> str:
    if not rows:
        return ""
    ths = "".join(f'<th class="num">{h}</th>' if h in NUMERIC else f"<th>{h}</th>" for h in head)
    note_html = f'<p class="note">{_t(note)}</p>' if note else ""
    return (
        f'<section class="card"><h2>{_t(title)}</h2>{note_html}'
        f"<table><tr>{ths}</tr>{''.join(rows)}</table></section>"
    )


def _shown(listed: int, total: int) -> str:
    return f"Showing the first {listed} of {total}." if total > listed else ""


def _target_cells(ref: Mapping[str, Any]) -> str:
    return (
        f"<td>{_t(ref.get('context'))}</td><td>{_t(ref.get('namespace'))}</td>"
        f"<td><code>{_t(target_name(ref))}</code></td>"
    )


def write_html(run: Mapping[str, Any], out: TextIO) -> None:
    word = verdict(run)
    colour = VERDICT_COLOURS.get(word, "#374151")
    t = run.get("targets") or {}
    fleet = run.get("fleet_threshold") or {}
    fleet_failures = [str(f) for f in fleet.get("failures") or []]
    fleet_html = ""
    if fleet_failures:
        items = "".join(f"<li>{_t(f)}</li>" for f in fleet_failures)
        fleet_html = f"<p>Fleet threshold not met:</p><ul>{items}</ul>"
    elif fleet.get("passed"):
        fleet_html = "<p>Fleet threshold met.</p>"
    facts = [
        ("Profile", run.get("profile")),
        ("Source", run.get("source")),
        ("Created", run.get("created_at")),
        ("Finished", run.get("finished_at")),
        ("Duration", _duration(run.get("created_at"), run.get("finished_at"))),
    ]
    kpis = [
        (t.get("total", 0), "targets"),
        (t.get("completed", 0), "scanned"),
        (t.get("passed", 0), "met threshold"),
        (t.get("failed", 0), "missed threshold"),
        (t.get("error", 0), "could not be scanned"),
        (f"{run.get('compliance', 0)}%", "compliance"),
    ]
    failing = run.get("failing_targets") or []
    failing_rows = [
        f"<tr>{_target_cells(f)}<td><ul>"
        + "".join(f"<li>{_t(x)}</li>" for x in f.get("failures") or [])
        + "</ul></td></tr>"
        for f in failing
    ]
    errors = run.get("error_targets") or []
    error_rows = []
    for e in errors:
        kind, message = error_of(e)
        error_rows.append(
            f"<tr>{_target_cells(e)}<td><code>{_t(kind)}</code></td>"
            f'<td class="msg">{_t(message)}</td></tr>'
        )
    top_rows = [
        f"<tr><td><code>{_t(c.get('id'))}</code></td><td>"
        f'<span class="pill" style="background:{_sev_colour(c.get("severity"))}">'
        f'{_t(c.get("severity"))}</span></td><td class="num">{_t(c.get("targets"))}</td></tr>'
        for c in run.get("top_failing_controls") or []
    ]
    title = f"scanfleet run {run.get('run_id')}: {word}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_t(title)}</title><style>{CSS}</style></head><body><main>",
        f'<header class="verdict" style="background:{colour}"><div class="badge">{word}</div>',
        f"<div><h1>scanfleet run <code>{_t(run.get('run_id'))}</code></h1>",
        f"<p>{_t(headline(run))}</p>",
        f"{fleet_html}</div></header>",
        '<div class="row"><section class="card"><dl class="facts">',
        *(f"<div><dt>{k}</dt><dd>{_t(v)}</dd></div>" for k, v in facts),
        '</dl></section></div><div class="row kpis">',
        *(
            f'<div class="card kpi"><div class="n">{_t(n)}</div><div class="l">{lbl}</div></div>'
            for n, lbl in kpis
        ),
        '</div><div class="row two"><div class="col">',
        bar_chart("Compliance by cluster", run.get("by_cluster") or {}),
        bar_chart("Compliance by namespace", run.get("by_namespace") or {}),
        "</div>",
        controls_chart(run.get("counts") or {}),
        '</div><div class="row">',
        _table(
            "Targets that missed their threshold",
            ("cluster", "namespace", "pod/container", "threshold failures"),
            failing_rows,
            _shown(len(failing), t.get("failed", 0)),
        ),
        _table(
            "Targets that could not be scanned",
            ("cluster", "namespace", "pod/container", "error", "message"),
            error_rows,
            _shown(len(errors), t.get("error", 0)),
        ),
        _table("Top failing controls", ("control", "severity", "targets failing"), top_rows),
        "</div></main></body></html>\n",
    ]
    out.write("\n".join(parts))
