"""A report as one string, for tests that read it whole."""

from __future__ import annotations

from collections.abc import Mapping
from io import StringIO
from typing import Any

from scanfleet.reports import write_report
from scanfleet.reports.common import Summaries


def render(fmt: str, run: Mapping[str, Any], summaries: Summaries = lambda: ()) -> str:
    buf = StringIO()
    write_report(fmt, run, summaries, buf)
    return buf.getvalue()
