"""The HTML run report: one self-contained page, charts drawn server-side as inline SVG.

Every target is listed, filterable, sortable and drills into its failed controls (title,
severity, message, fix text); a control view lists each failing control with how many
targets and images fail it. Those are rendered client-side by one inline script
(`html_script.SCRIPT`) from two embedded JSON blocks: the targets, streamed from the
summaries one at a time, and the failed controls' titles, severities and fix texts, each
once. What the page must never do: run any other script, fetch anything (no fonts, images,
stylesheets or links to the network: the Content-Security-Policy is `default-src 'none'`
plus the script's own sha256) or put unescaped text from a cluster, profile or auditor
into markup (the JSON blocks escape `<`, `>` and `&`; the script escapes every value).
Sized to read on a 1366x768 laptop: the verdict and the headline numbers fit above the fold.
Pure: run dict and summaries in, text out.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from html import escape
from typing import Any, TextIO

from scanfleet.judging.documents import Outcome, failed_controls_of, judge
from scanfleet.judging.report import SEVERITIES, STATUSES
from scanfleet.reports.common import (
    STATUS_LABELS,
    Summaries,
    clean_text,
    error_of,
    headline,
    target_name,
    verdict,
)
from scanfleet.reports.html_script import SCRIPT

MAX_BARS = 40
NUMERIC = frozenset({"targets failing", "images failing"})
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
.filters{display:flex;flex-wrap:wrap;gap:8px;align-items:center;margin-bottom:8px}
.filters select,.filters input{font:inherit;padding:3px 6px}
[data-sort]{cursor:pointer;user-select:none}
[aria-sort=ascending]::after{content:" \\25B2"}
[aria-sort=descending]::after{content:" \\25BC"}
.grid{display:grid;grid-template-columns:100px 1fr 1fr 1.4fr 1fr 2fr 120px 110px}
.grid>div{padding:5px 8px;border-bottom:1px solid #e5e7eb;overflow:hidden;
 text-overflow:ellipsis;white-space:nowrap}
.grid.head{position:sticky;top:0;z-index:1;background:#fff;font-size:12px;color:#4b5563;
 text-transform:uppercase;letter-spacing:.04em;font-weight:700}
.grid.head>div{white-space:normal}
.grid .num{text-align:right}
.chunk{content-visibility:auto}
.t{cursor:pointer}
.t:hover,.t.open{background:#eff6ff}
.t .oc{font-weight:700}.t.failed .oc{color:#b91c1c}.t.error .oc{color:#b45309}
.t.passed .oc{color:#15803d}
.t .mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px}
.t .img{font-size:12px;color:#374151}
.detail{padding:6px 12px;background:#f9fafb;border-bottom:1px solid #e5e7eb;
 overflow-wrap:anywhere}
.fc{border-left:3px solid #e5e7eb;padding:4px 8px;margin:6px 0}
.fc .ctitle{font-weight:600}
.fmsg{color:#374151;font-size:13px}
.fix summary{cursor:pointer;color:#1d4ed8}
.which{font-size:12px}
.scroll{max-height:70vh;overflow:auto}
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


MAX_JSON_MESSAGE = 300
"""Characters of a failing result's message kept per target and control on the page."""


def _json_block(value: object) -> str:
    """JSON that cannot end its <script> element or start markup (`<`, `>`, `&` escaped)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for ch, rep in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(ch, rep)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _text(value: object, limit: int | None = None) -> str | None:
    if value is None:
        return None
    text = clean_text(value)
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


def _stream_targets(
    summaries: Summaries, out: TextIO, controls: dict[str, list[str | None]]
) -> None:
    """One JSON array row per target, written as read; failed controls' text into
    `controls` (id -> [title, severity, fix]), once per control."""
    out.write('<script type="application/json" id="sf-targets">[')
    first = True
    for s in summaries():
        v = judge(s)
        target = s.get("target")
        target = target if isinstance(target, Mapping) else {}
        failed = []
        for c in failed_controls_of(s) if v.outcome is not Outcome.ERROR else []:
            failed.append([_text(c["id"]), _text(c["message"], MAX_JSON_MESSAGE)])
            known = controls.setdefault(_text(c["id"]) or "", [None, c["severity"], None])
            known[0] = known[0] or _text(c["title"])
            known[2] = known[2] or _text(c["fix"])
        error = ""
        if v.outcome is Outcome.ERROR:
            kind, message = error_of({"error": v.error})
            error = f"{kind}: {message}"
        compliance = v.counts.compliance if v.counts is not None else None
        row = [
            _text(s.get("scan_id")),
            str(v.outcome),
            _text(target.get("context")) or "",
            _text(target.get("namespace")) or "",
            _text(target.get("pod")) or "?",
            _text(target.get("container")),
            _text(target.get("image") or target.get("image_id")),
            compliance,
            [_text(f) for f in v.failures],
            failed,
            _text(error) or "",
        ]
        out.write("" if first else ",\n")
        out.write(_json_block(row))
        first = False
    out.write("]</script>\n")


TARGETS_CARD = """<section class="card" id="sf-targets-card"><h2>Targets</h2>
<div class="filters"><select id="sf-outcome" aria-label="outcome">
<option value="">all outcomes</option><option value="failed">failed</option>
<option value="error">error</option><option value="passed">passed</option></select>
<select id="sf-namespace" aria-label="namespace"></select>
<select id="sf-cluster" aria-label="cluster"></select>
<input id="sf-q" type="search" placeholder="pod, container or image" aria-label="search">
<span id="sf-shown" class="note"></span>
<button type="button" id="sf-clear-control" hidden>show all controls</button></div>
<p class="note">Click a target for its failed controls, their messages and fix text;
click a column to sort.</p>
<div class="scroll"><div id="sf-table" role="table"><div class="grid head" role="row">
<div role="columnheader" data-sort="outcome">outcome</div>
<div role="columnheader" data-sort="cluster">cluster</div>
<div role="columnheader" data-sort="namespace">namespace</div>
<div role="columnheader" data-sort="pod">pod</div>
<div role="columnheader" data-sort="container">container</div>
<div role="columnheader" data-sort="image">image</div>
<div role="columnheader" data-sort="compliance" class="num">compliance</div>
<div role="columnheader" data-sort="controls" class="num">failed controls</div>
</div><div id="sf-rows" role="rowgroup"></div></div></div></section>
<section class="card" id="sf-control-card"><h2>Failing controls</h2>
<p class="note" id="sf-controls-count"></p><div class="scroll"><table><thead><tr>
<th>control</th><th>title</th><th>severity</th><th class="num">targets failing</th>
<th class="num">images failing</th><th>which</th></tr></thead>
<tbody id="sf-control-rows"></tbody></table></div></section>"""


def page_script() -> str:
    """The inline script with the severity colours filled in."""
    return SCRIPT.replace("__COLOURS__", json.dumps(SEV_COLOURS))


def script_hash(script: str) -> str:
    """The CSP source that allows exactly `script`."""
    digest = hashlib.sha256(script.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def write_html(run: Mapping[str, Any], summaries: Summaries, out: TextIO) -> None:
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
        f"<tr><td><code>{_t(c.get('id'))}</code></td><td>{_t(c.get('title'))}</td><td>"
        f'<span class="pill" style="background:{_sev_colour(c.get("severity"))}">'
        f'{_t(c.get("severity"))}</span></td><td class="num">{_t(c.get("targets"))}</td>'
        f'<td class="num">{_t(c.get("images", ""))}</td></tr>'
        for c in run.get("top_failing_controls") or []
    ]
    script = page_script()
    title = f"scanfleet run {run.get('run_id')}: {word}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'; "
        f'script-src {script_hash(script)}">',
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
        TARGETS_CARD,
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
        _table(
            "Top failing controls",
            ("control", "title", "severity", "targets failing", "images failing"),
            top_rows,
        ),
        "</div></main>",
    ]
    out.write("\n".join(parts) + "\n")
    controls: dict[str, list[str | None]] = {}
    _stream_targets(summaries, out, controls)
    out.write('<script type="application/json" id="sf-controls">')
    out.write(_json_block(controls))
    out.write(f"</script>\n<script>{script}</script></body></html>\n")
