"""Results on disk: run ids, the run directory, atomic JSON files (SPEC §4).

`DIR/<run_id>/` holds `<scan_id>.report.json` (the auditor's raw report, unchanged),
`<scan_id>.json` (the target summary) and `run.json` (the run summary). Files are written
to a temporary name and renamed, so a reader never sees half a file and a redelivered scan
replaces its summary instead of adding a second one. Never writes a credential.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scanfleet.errors import BadInput

RUN_ID_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")


def check_run_id(run_id: str) -> str:
    if not RUN_ID_RE.match(run_id):
        raise BadInput(f"invalid run id {run_id!r}: expected YYYYMMDDTHHMMSSZ-xxxxxx")
    return run_id


def run_dir(results_dir: Path, run_id: str) -> Path:
    return results_dir / check_run_id(run_id)


def report_path(directory: Path, scan_id: str) -> Path:
    return directory / f"{scan_id}.report.json"


def summary_path(directory: Path, scan_id: str) -> Path:
    return directory / f"{scan_id}.json"


def write_json(path: Path, data: Any) -> None:
    """Atomically write JSON (temp file in the same directory, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    with path.open() as f:
        return json.load(f)


def summary_files(directory: Path) -> Iterator[Path]:
    """Target summary files of a run directory (not reports, not run.json), sorted."""
    for p in sorted(directory.glob("*.json")):
        if p.name == "run.json" or p.name.endswith(".report.json") or p.name.startswith("."):
            continue
        yield p


def iter_summaries(directory: Path) -> Iterator[dict[str, Any]]:
    """Stream the target summaries of a run, one parsed file at a time."""
    for p in summary_files(directory):
        data = read_json(p)
        if isinstance(data, dict):
            yield data
