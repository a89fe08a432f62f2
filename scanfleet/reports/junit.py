"""JUnit XML for CI systems: one testsuite per cluster, one testcase per target.

A target that missed its threshold is a `<failure>` whose message names the threshold
checks it missed and its failed controls (id, severity, title; the first MESSAGE_CONTROLS,
the body lists up to BODY_CONTROLS with their failing messages), one whose scan could not
complete an `<error>`; covered_by targets are ordinary test cases that say which scan covered them.
Streamed: one pass over the summaries per cluster, never the whole run in memory.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any, TextIO
from xml.sax.saxutils import XMLGenerator
from xml.sax.xmlreader import AttributesImpl

from scanfleet.judging.documents import Outcome, failed_controls_of, judge, outcome
from scanfleet.judging.report import SEVERITIES, STATUSES
from scanfleet.reports.common import (
    STATUS_LABELS,
    Summaries,
    clean_text,
    error_of,
    target_name,
)

MESSAGE_CONTROLS = 10
BODY_CONTROLS = 200
MAX_LINE = 300


def _clip(text: object, n: int = MAX_LINE) -> str:
    s = " ".join(str(text or "").split())
    return s if len(s) <= n else s[: n - 1] + "…"


def _control_line(c: Mapping[str, Any]) -> str:
    return f"{c['id']} ({c['severity']})" + (f" {_clip(c['title'])}" if c["title"] else "")


def failure_text(failures: list[str], controls: list[dict[str, Any]]) -> tuple[str, str]:
    """(message attribute, element text) of a failing target."""
    n = len(failures)
    message = f"missed its threshold ({n} check{'' if n == 1 else 's'} failed): " + "; ".join(
        failures
    )
    body = list(failures)
    if controls:
        named = [_control_line(c) for c in controls[:MESSAGE_CONTROLS]]
        more = len(controls) - len(named)
        message += f". {len(controls)} failed control{'' if len(controls) == 1 else 's'}: "
        message += "; ".join(named) + (f"; … and {more} more" if more else "")
        body += ["", f"Failed controls ({len(controls)}):"]
        for c in controls[:BODY_CONTROLS]:
            body.append(f"- {_control_line(c)}")
            if c["message"]:
                body.append(f"    {_clip(c['message'])}")
        if len(controls) > BODY_CONTROLS:
            body.append(f"… and {len(controls) - BODY_CONTROLS} more")
    return message, "\n".join(body)


def _seconds(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


class _Sink(io.TextIOBase):
    """Any text stream, seen by XMLGenerator as text (it would write bytes to others)."""

    def __init__(self, out: TextIO) -> None:
        super().__init__()
        self._out = out

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self._out.write(s)
        return len(s)


class _Xml:
    """A streaming, escaping, indenting writer over XMLGenerator."""

    def __init__(self, out: TextIO) -> None:
        self.gen = XMLGenerator(_Sink(out), encoding="utf-8", short_empty_elements=True)
        self.depth = 0

    def start(self, name: str, attrs: Mapping[str, object]) -> None:
        if self.depth:  # the root follows the XML declaration's own line break
            self.gen.ignorableWhitespace("\n" + "  " * self.depth)
        self.gen.startElement(name, AttributesImpl({k: clean_text(v) for k, v in attrs.items()}))
        self.depth += 1

    def end(self, name: str, *, inline: bool = False) -> None:
        self.depth -= 1
        if not inline:
            self.gen.ignorableWhitespace("\n" + "  " * self.depth)
        self.gen.endElement(name)

    def leaf(self, name: str, attrs: Mapping[str, object], text: str | None = None) -> None:
        self.start(name, attrs)
        if text:
            self.gen.characters(clean_text(text))
        self.end(name, inline=True)


def _suite_stats(summaries: Summaries) -> dict[str, dict[str, float]]:
    stats: dict[str, dict[str, float]] = {}
    for s in summaries():
        ctx = str((s.get("target") or {}).get("context") or "")
        st = stats.setdefault(ctx, dict.fromkeys(("tests", "failures", "errors", "time"), 0.0))
        st["tests"] += 1
        kind = outcome(s)
        st["failures"] += kind == "failed"
        st["errors"] += kind == "error"
        st["time"] += _seconds(s.get("duration_s"))
    return dict(sorted(stats.items()))


def _system_out(s: Mapping[str, Any]) -> str:
    target = s.get("target") or {}
    lines = [f"scan {s.get('scan_id')} of image {target.get('image') or '?'}"]
    if s.get("covered_by"):
        lines.append(
            f"covered by scan {s['covered_by']}: the same image was scanned once for this run, "
            "and its result stands for this container"
        )
    counts = s.get("counts")
    if outcome(s) != "error" and isinstance(counts, Mapping):
        lines.append(f"compliance {s.get('compliance')}%")
        for status in STATUSES:
            c = counts.get(status) or {}
            per_sev = ", ".join(f"{sev} {c.get(sev, 0)}" for sev in SEVERITIES)
            lines.append(f"{STATUS_LABELS[status]}: {c.get('total', 0)} ({per_sev})")
    return "\n".join(lines) + "\n"


def _testcase(xml: _Xml, s: Mapping[str, Any]) -> None:
    target = s.get("target") or {}
    xml.start(
        "testcase",
        {
            "classname": f"{target.get('context') or ''}.{target.get('namespace') or ''}",
            "name": target_name(target),
            "time": f"{_seconds(s.get('duration_s')):.3f}",
        },
    )
    verdict = judge(s)
    if verdict.outcome is Outcome.FAILED:
        message, body = failure_text(list(verdict.failures), failed_controls_of(s))
        xml.leaf("failure", {"type": "threshold", "message": message}, body)
    elif verdict.outcome is Outcome.ERROR:
        e_kind, message = error_of({"error": verdict.error})
        xml.leaf("error", {"type": e_kind, "message": message}, message)
    xml.leaf("system-out", {}, _system_out(s))
    xml.end("testcase")


def write_junit(run: Mapping[str, Any], summaries: Summaries, out: TextIO) -> None:
    """JUnit XML: `<testsuites>` with totals, a `<testsuite>` per cluster (context)."""
    stats = _suite_stats(summaries)
    totals = {k: sum(st[k] for st in stats.values()) for k in ("tests", "failures", "errors")}
    time = sum(st["time"] for st in stats.values())
    xml = _Xml(out)
    xml.gen.startDocument()
    xml.start(
        "testsuites",
        {
            "name": f"scanfleet run {run.get('run_id')}",
            **{k: int(v) for k, v in totals.items()},
            "time": f"{time:.3f}",
        },
    )
    for ctx, st in stats.items():
        xml.start(
            "testsuite",
            {
                "name": ctx or "(no context)",
                "tests": int(st["tests"]),
                "failures": int(st["failures"]),
                "errors": int(st["errors"]),
                "skipped": 0,
                "time": f"{st['time']:.3f}",
                "timestamp": str(run.get("created_at") or ""),
            },
        )
        xml.start("properties", {})
        for key in ("run_id", "profile", "source"):
            xml.leaf("property", {"name": key, "value": run.get(key) or ""})
        xml.end("properties")
        for s in summaries():
            if str((s.get("target") or {}).get("context") or "") == ctx:
                _testcase(xml, s)
        xml.end("testsuite")
    xml.end("testsuites")
    xml.gen.ignorableWhitespace("\n")
    xml.gen.endDocument()
