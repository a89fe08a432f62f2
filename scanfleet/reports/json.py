"""`json` report: run.json plus every target summary (`targets_detail`), streamed."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TextIO

from scanfleet.reports.common import Summaries


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
