"""Run reports: a run summary (run.json) and its target summaries rendered for people and CI.

Formats: `json` (run.json plus every target summary), `markdown` (a ticket or CI job
summary), `junit` (one testsuite per cluster, one testcase per target) and `html` (one
self-contained page), one module per format in this package. Writers take an output
stream and write as they go; target summaries come from a zero-argument callable returning
a fresh iterable, so a 10k-target run is never held in memory (junit makes one pass per
cluster instead).
Markdown and html need only run.json: its failing/error target lists are already bounded.

Pure: no file or network I/O, no environment, no logging configuration, except `heimdall`
(uploads HDF files to a Heimdall server). `hdf` builds Heimdall files from the raw reports
the caller reads. All text that came from a cluster, a profile or an auditor is escaped for
the format it lands in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TextIO

from scanfleet.reports.common import Summaries
from scanfleet.reports.html import write_html
from scanfleet.reports.json import write_json
from scanfleet.reports.junit import write_junit
from scanfleet.reports.markdown import write_markdown

FORMATS = ("json", "markdown", "junit", "html")


def write_report(fmt: str, run: Mapping[str, Any], summaries: Summaries, out: TextIO) -> None:
    if fmt == "json":
        write_json(run, summaries, out)
    elif fmt == "markdown":
        write_markdown(run, out)
    elif fmt == "junit":
        write_junit(run, summaries, out)
    elif fmt == "html":
        write_html(run, summaries, out)
    else:
        raise ValueError(f"unknown report format {fmt!r}: expected one of {', '.join(FORMATS)}")
