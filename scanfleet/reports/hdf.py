"""`hdf` export: one Heimdall Data Format file per scanned target, named for the target.

HDF is InSpec's exec-JSON plus optional fields; Heimdall (and its parser, inspecjs) loads it
as is. Each file is the auditor's report (read from `<scan_id>.report.json`, which is never
touched) with two additions: `platform.target_id` set to `context/namespace/pod/container`,
and `passthrough.scanfleet` carrying what Heimdall otherwise cannot know (run and scan id,
the target, its image and image id, when it was scanned, scanfleet's version, the profile's
sha256). Any `passthrough` the report already had is kept.

File names: `<context>_<namespace>_<pod>_<container>.json`, each part reduced to
`[A-Za-z0-9.-]` (anything else becomes `-`), clipped, and made unique within the run (a
name already taken gets `_<scan_id>`). Targets that could not be scanned have no report and
are skipped; a `--dedupe-images` target gets its covering scan's report.

Pure: the caller reads the reports and writes the files (`export` takes both as callables),
so a 10k-target run is streamed one report at a time.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from scanfleet import __version__
from scanfleet.judging.documents import Outcome, judge
from scanfleet.reports.common import Summaries

MAX_PART = 60
_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+")


def _safe(part: object) -> str:
    text = _UNSAFE.sub("-", str(part or "")).strip("-.")
    return text[:MAX_PART] or "none"


def hdf_file_name(target: Mapping[str, Any]) -> str:
    """`<context>_<namespace>_<pod>_<container>.json`, filesystem-safe on any OS."""
    parts = (target.get(k) for k in ("context", "namespace", "pod", "container"))
    return "_".join(_safe(p) for p in parts) + ".json"


def target_id(target: Mapping[str, Any]) -> str:
    keys = ("context", "namespace", "pod", "container")
    return "/".join(str(target.get(k) or "*") for k in keys)


def metadata(summary: Mapping[str, Any], run: Mapping[str, Any]) -> dict[str, Any]:
    """What scanfleet knows about the scan, for HDF's `passthrough.scanfleet`."""
    target = summary.get("target") or {}
    return {
        "run_id": summary.get("run_id") or run.get("run_id"),
        "scan_id": summary.get("scan_id"),
        "covered_by": summary.get("covered_by"),
        "context": target.get("context"),
        "namespace": target.get("namespace"),
        "pod": target.get("pod"),
        "container": target.get("container"),
        "image": target.get("image"),
        "image_id": target.get("image_id"),
        "scanned_at": summary.get("finished_at") or summary.get("started_at"),
        "scanfleet_version": __version__,
        "profile": run.get("profile"),
        "profile_sha256": summary.get("profile_sha256") or run.get("profile_sha256"),
        "compliance": summary.get("compliance"),
        "threshold": summary.get("threshold"),
    }


def hdf_document(
    report: Mapping[str, Any], summary: Mapping[str, Any], run: Mapping[str, Any]
) -> dict[str, Any]:
    """The report with `platform.target_id` and `passthrough.scanfleet` added."""
    doc = dict(report)
    platform = doc.get("platform")
    doc["platform"] = {
        **(platform if isinstance(platform, Mapping) else {}),
        "target_id": target_id(summary.get("target") or {}),
    }
    passthrough = doc.get("passthrough")
    doc["passthrough"] = {
        **(passthrough if isinstance(passthrough, Mapping) else {}),
        "scanfleet": metadata(summary, run),
    }
    return doc


@dataclass(frozen=True)
class HdfFile:
    """One target's HDF file (`data`), or why it has none (`problem`)."""

    name: str
    summary: Mapping[str, Any]
    data: bytes | None = None
    problem: str | None = None


def export(
    run: Mapping[str, Any], summaries: Summaries, read_report: Callable[[str], bytes]
) -> Iterator[HdfFile]:
    """Each target's HDF file, one at a time. `read_report(scan_id)` returns the raw report
    or raises OSError; a missing or unparsable report is a `problem`, never an abort."""
    used: set[str] = set()
    for summary in summaries():
        target = summary.get("target") or {}
        name = hdf_file_name(target)
        if name in used:
            name = f"{name[:-5]}_{_safe(summary.get('scan_id'))}.json"
        used.add(name)
        if judge(summary).outcome is Outcome.ERROR:
            yield HdfFile(name, summary, problem="could not be scanned: no report")
            continue
        source = str(summary.get("covered_by") or summary.get("scan_id"))
        try:
            report = json.loads(read_report(source))
        except OSError as e:
            yield HdfFile(name, summary, problem=f"report {source}: {e.strerror or e}")
            continue
        except ValueError as e:
            yield HdfFile(name, summary, problem=f"report {source} is not JSON: {e}")
            continue
        if not isinstance(report, dict):
            yield HdfFile(name, summary, problem=f"report {source} is not a JSON object")
            continue
        doc = hdf_document(report, summary, run)
        yield HdfFile(name, summary, json.dumps(doc, ensure_ascii=False).encode("utf-8"))
