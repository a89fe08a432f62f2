"""What every report format shares: verdict words, the reason sentence, target names,
and text cleaning for formats that carry cluster- and auditor-supplied text.

Pure: no I/O, no environment, no logging. Must never judge a target itself: outcomes come
from `summaries.judge`, verdicts from run.json's exit code.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from scanfleet.core.errors import ExitCode
from scanfleet.core.textsafe import strip_hidden

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


def clean_text(value: object) -> str:
    """Text without terminal escape sequences, C1 and bidi controls (removed) and without
    the control characters XML 1.0 cannot carry (replaced by U+FFFD). Every format but
    json goes through here; json keeps the text and escapes it (`\\u001b`, `\\u202e`)."""
    return _XML_ILLEGAL.sub("\ufffd", strip_hidden("" if value is None else str(value)))
