"""A sweep's trend over its last runs: compliance overall and per cluster, the controls that
newly fail or were fixed between the last two runs, and a namespace-by-severity heat map of
the latest run's failures. `trend_series` builds the data (the `--format json` document);
`write_trend_html` draws it as one page of inline SVG: no script, nothing fetched.

Pure: run.json documents and the two latest runs' failed controls in, text out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any, TextIO

from scanfleet.judging.report import SEVERITIES
from scanfleet.reports.common import clean_text, verdict
from scanfleet.reports.html import CSS, SEV_COLOURS, VERDICT_COLOURS

FailedControls = Mapping[str, Mapping[str, Any]]
"""{control id: {title, severity, targets}}: a run's failed controls."""

LINE_COLOURS = ("#111827", "#2563eb", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d")
MAX_LISTED = 200


def _t(value: object) -> str:
    return escape(clean_text(value))


def trend_series(
    sweep: str,
    runs: Sequence[Mapping[str, Any]],
    failed_before: FailedControls | None,
    failed_last: FailedControls | None,
) -> dict[str, Any]:
    """The trend document: `runs` oldest first; changes between the last two runs."""
    clusters = sorted({c for r in runs for c in (r.get("by_cluster") or {})})
    series = []
    for r in runs:
        by_cluster = r.get("by_cluster") or {}
        series.append(
            {
                "run_id": r.get("run_id"),
                "created_at": r.get("created_at"),
                "verdict": verdict(r),
                "exit_code": r.get("exit_code"),
                "compliance": r.get("compliance"),
                "targets": r.get("targets"),
                "by_cluster": {
                    c: by_cluster[c].get("compliance") if c in by_cluster else None
                    for c in clusters
                },
            }
        )
    changes: dict[str, Any] | None = None
    if len(runs) >= 2 and failed_before is not None and failed_last is not None:

        def entry(cid: str, info: Mapping[str, Any]) -> dict[str, Any]:
            return {"id": cid, **{k: info.get(k) for k in ("title", "severity", "targets")}}

        rank = {s: i for i, s in enumerate(SEVERITIES)}

        def order(e: Mapping[str, Any]) -> tuple[int, int, str]:
            return (rank.get(str(e["severity"]), 9), -int(e.get("targets") or 0), str(e["id"]))

        changes = {
            "from": runs[-2].get("run_id"),
            "to": runs[-1].get("run_id"),
            "newly_failing": sorted(
                (entry(c, i) for c, i in failed_last.items() if c not in failed_before),
                key=order,
            ),
            "fixed": sorted(
                (entry(c, i) for c, i in failed_before.items() if c not in failed_last),
                key=order,
            ),
        }
    latest = runs[-1] if runs else {}
    heat = {
        ns: {
            sev: int(((g.get("counts") or {}).get("failed") or {}).get(sev, 0))
            for sev in SEVERITIES
        }
        for ns, g in sorted((latest.get("by_namespace") or {}).items())
    }
    return {
        "sweep": sweep,
        "runs": series,
        "clusters": clusters,
        "changes": changes,
        "heatmap": {"run_id": latest.get("run_id"), "severities": list(SEVERITIES), "failed": heat},
    }


def write_trend_json(series: Mapping[str, Any], out: TextIO) -> None:
    out.write(json.dumps(series, indent=2) + "\n")


def compliance_chart(series: Mapping[str, Any]) -> str:
    """Compliance over the runs: the overall line (thick) and one line per cluster."""
    runs = series["runs"]
    width, height, left, right, top, bottom = 760, 300, 44, 150, 14, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    n = len(runs)

    def x(i: int) -> float:
        return left + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    def y(v: float) -> float:
        return top + plot_h * (1 - v / 100)

    out = [
        f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" '
        'aria-label="Compliance over the last runs" id="trend-chart">'
    ]
    for v in (0, 25, 50, 75, 100):
        out.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
            f'stroke="#e5e7eb"/><text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end" '
            f'font-size="11">{v}%</text>'
        )
    for i, r in enumerate(runs):
        label = str(r["run_id"] or "")[:8]
        out.append(
            f'<text x="{x(i):.1f}" y="{height - bottom + 16}" text-anchor="middle" '
            f'font-size="10">{_t(label)}</text>'
        )
    lines = [("all clusters", [r["compliance"] for r in runs], 3.5)]
    lines += [(c, [r["by_cluster"].get(c) for r in runs], 1.8) for c in series["clusters"]]
    for k, (name, values, stroke) in enumerate(lines):
        colour = LINE_COLOURS[k % len(LINE_COLOURS)]
        points = [(x(i), y(float(v))) for i, v in enumerate(values) if v is not None]
        pts = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
        out.append(
            f'<polyline class="series" data-series="{_t(name)}" points="{pts}" fill="none" '
            f'stroke="{colour}" stroke-width="{stroke}"><title>{_t(name)}</title></polyline>'
        )
        for (px, py), v in zip(points, [v for v in values if v is not None], strict=True):
            out.append(
                f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{colour}">'
                f"<title>{_t(name)}: {v}%</title></circle>"
            )
        ly = top + 14 + 18 * k
        out.append(
            f'<rect x="{left + plot_w + 14}" y="{ly - 9}" width="12" height="4" fill="{colour}"/>'
            f'<text x="{left + plot_w + 32}" y="{ly - 3}" font-size="12">'
            f"{_t(name[:18])}</text>"
        )
    out.append("</svg>")
    return "".join(out)


def heatmap(series: Mapping[str, Any]) -> str:
    """Namespaces (rows) by severities (columns): failed controls, darker for more."""
    failed = series["heatmap"]["failed"]
    names = list(failed)
    biggest = max((n for row in failed.values() for n in row.values()), default=0) or 1
    cell_w, cell_h, label_w, head = 86, 24, 170, 22
    width, height = label_w + cell_w * len(SEVERITIES), head + cell_h * len(names) + 4
    out = [
        f'<svg viewBox="0 0 {width} {height}" width="{width}" style="max-width:100%" '
        'role="img" id="heatmap" '
        'aria-label="Failed controls by namespace and severity">'
    ]
    for j, sev in enumerate(SEVERITIES):
        out.append(
            f'<text x="{label_w + cell_w * j + cell_w / 2}" y="15" text-anchor="middle" '
            f'font-size="12">{sev}</text>'
        )
    for i, ns in enumerate(names):
        yy = head + cell_h * i
        out.append(
            f'<text x="{label_w - 8}" y="{yy + 16}" text-anchor="end" font-size="12">'
            f"{_t((ns or '(none)')[:24])}</text>"
        )
        for j, sev in enumerate(SEVERITIES):
            n = failed[ns][sev]
            opacity = 0.08 + 0.92 * n / biggest if n else 0.0
            out.append(
                f'<rect class="cell" data-namespace="{_t(ns)}" data-severity="{sev}" '
                f'data-failed="{n}" x="{label_w + cell_w * j + 1}" y="{yy + 1}" '
                f'width="{cell_w - 2}" height="{cell_h - 2}" rx="3" fill="{SEV_COLOURS[sev]}" '
                f'fill-opacity="{opacity:.2f}" stroke="#e5e7eb"><title>{_t(ns)} · {sev}: {n}'
                f'</title></rect><text x="{label_w + cell_w * j + cell_w / 2}" y="{yy + 16}" '
                f'text-anchor="middle" font-size="12" '
                f'fill="{"#fff" if opacity > 0.55 else "#111827"}">{n}</text>'
            )
    out.append("</svg>")
    return "".join(out)


def _control_list(title: str, key: str, entries: Sequence[Mapping[str, Any]]) -> str:
    if not entries:
        return (
            f'<section class="card" id="{key}"><h2>{title}</h2><p class="note">None.</p></section>'
        )

    def row(e: Mapping[str, Any]) -> str:
        colour = SEV_COLOURS.get(str(e["severity"]), "#6b7280")
        return (
            f"<tr><td><code>{_t(e['id'])}</code></td><td>{_t(e.get('title') or '')}</td>"
            f'<td><span class="pill" style="background:{colour}">{_t(e["severity"])}</span>'
            f'</td><td class="num">{_t(e.get("targets") or "")}</td></tr>'
        )

    rows = "".join(row(e) for e in entries[:MAX_LISTED])
    more = (
        f'<p class="note">Showing {MAX_LISTED} of {len(entries)}.</p>'
        if len(entries) > MAX_LISTED
        else ""
    )
    return (
        f'<section class="card" id="{key}"><h2>{title} ({len(entries)})</h2>{more}<table>'
        '<tr><th>control</th><th>title</th><th>severity</th><th class="num">targets</th></tr>'
        f"{rows}</table></section>"
    )


def write_trend_html(series: Mapping[str, Any], out: TextIO) -> None:
    runs = series["runs"]
    last = runs[-1] if runs else {}
    word = str(last.get("verdict") or "UNKNOWN")
    colour = VERDICT_COLOURS.get(word, "#374151")
    changes = series.get("changes")
    run_rows = "".join(
        f"<tr><td><code>{_t(r['run_id'])}</code></td><td>{_t(r['created_at'])}</td>"
        f'<td>{_t(r["verdict"])}</td><td class="num">{_t(r["compliance"])}%</td>'
        + "".join(
            f'<td class="num">{"" if v is None else f"{v}%"}</td>' for v in r["by_cluster"].values()
        )
        + "</tr>"
        for r in reversed(runs)
    )
    cluster_heads = "".join(f'<th class="num">{_t(c)}</th>' for c in series["clusters"])
    if changes:
        change_html = (
            f'<p class="note">Between <code>{_t(changes["from"])}</code> and '
            f'<code>{_t(changes["to"])}</code>.</p></div><div class="row two">'
            + _control_list("Newly failing controls", "newly-failing", changes["newly_failing"])
            + _control_list("Fixed controls", "fixed", changes["fixed"])
        )
    else:
        change_html = '<p class="note">One run so far: nothing to compare.</p>'
    title = f"scanfleet sweep {series['sweep']}: {len(runs)} runs"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_t(title)}</title><style>{CSS}</style></head><body><main>",
        f'<header class="verdict" style="background:{colour}"><div class="badge">{_t(word)}</div>',
        f"<div><h1>scanfleet sweep <code>{_t(series['sweep'])}</code></h1>",
        f"<p>Last {len(runs)} runs; the latest is <code>{_t(last.get('run_id'))}</code> at "
        f"{_t(last.get('compliance'))}% compliance.</p></div></header>",
        '<div class="row"><section class="card"><h2>Compliance over the last runs</h2>',
        compliance_chart(series),
        "</section></div>",
        '<div class="row">',
        change_html,
        "</div>",
        '<div class="row"><section class="card"><h2>Failed controls by namespace and severity '
        f"(run <code>{_t(series['heatmap']['run_id'])}</code>)</h2>",
        heatmap(series),
        "</section>",
        '<section class="card"><h2>Runs</h2><table id="runs"><tr><th>run</th><th>created</th>'
        f'<th>verdict</th><th class="num">all clusters</th>{cluster_heads}</tr>{run_rows}'
        "</table></section></div></main></body></html>\n",
    ]
    out.write("\n".join(parts))
