"""Runs built from the real sample reports, and reports rendered whole: shared by the
report and CLI tests."""

from __future__ import annotations

import hashlib
import re
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import yaml

from scanfleet.judging.aggregate import Aggregator
from scanfleet.judging.documents import failed_controls
from scanfleet.judging.report import Counts, control_ids, load_report
from scanfleet.judging.thresholds import parse_fleet_threshold, parse_threshold
from scanfleet.reports import write_report
from scanfleet.reports.common import Summaries
from scanfleet.store.files import run_dir, summary_path
from scanfleet.store.files import write_json as write_json_file
from tests.support.fixtures_auditor import SAMPLES
from tests.support.paths import DATA

JUNIT_XSD = DATA / "junit.xsd"


RUN_ID = "20260301T101500Z-a1b2c3"


PROFILE = "https://github.com/mitre/redhat-enterprise-linux-8-stig-baseline/archive/main.tar.gz"


THRESHOLD = {"compliance": {"min": 30}, "failed": {"critical": {"max": 0}}}


# Markup on the first line: run.json's error_targets keep only that (aggregate.error_line).
HOSTILE = "auditor killed after 1800s | exit 137 <script>alert('x')</script> &\n\x1b[31mred"


@dataclass(frozen=True)
class Spec:
    context: str
    namespace: str
    pod: str
    container: str
    sample: str | None = None  # None: the scan could not complete
    error: tuple[str, str] | None = None
    covered_by: str | None = None  # pod of the target whose scan stands for this one


FULL = [
    # wrapper: 60 critical failures, compliance 5% -> misses both checks
    Spec("prod-east", "payments", "api-7d9f", "app", "wrapper-acme-run.json"),
    Spec("prod-east", "payments", "worker-5c8b", "app", "red_hat_good.json"),
    Spec("prod-east", "web", "frontend-6f4d", "nginx", "inspec_fixture_json_output.json"),
    Spec("prod-west", "web", "frontend-9a2c", "nginx", "triple_overlay_profile_sample.json"),
    Spec("prod-west", "db", "postgres-0", "postgres", "rhel8_sample_oneOfEachControlStatus.json"),
    Spec("prod-west", "db", "redis-0", "redis", "minimal_hdf.json"),
    Spec("prod-west", "db", "backup-cron", "app", error=("timeout", HOSTILE)),
    Spec(
        "prod-east", "payments", "worker-9x1z", "app", "red_hat_good.json", covered_by="worker-5c8b"
    ),
]


FAILING = {"api-7d9f", "frontend-9a2c", "redis-0"}


PASSING = [FULL[1], FULL[2]]


WITH_ERROR = [*PASSING, FULL[6]]


def scan_id(spec: Spec) -> str:
    key = "\0".join([RUN_ID, spec.context, spec.namespace, spec.pod, spec.container])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def make_summary(spec: Spec, i: int, by_pod: dict[str, Spec]) -> dict[str, Any]:
    target = {
        "context": spec.context,
        "namespace": spec.namespace,
        "pod": spec.pod,
        "container": spec.container,
        "image": f"registry.example/{spec.pod.split('-')[0]}:1.{i}",
        "image_id": f"sha256:{i:064x}",
    }
    base = {
        "scan_id": scan_id(spec),
        "run_id": RUN_ID,
        "target": target,
        "covered_by": scan_id(by_pod[spec.covered_by]) if spec.covered_by else None,
        "started_at": f"2026-03-01T10:15:{i:02d}Z",
        "finished_at": f"2026-03-01T10:16:{i:02d}Z",
        "duration_s": 60.0 + i / 4,
        "cleanup": "complete",
    }
    if spec.sample is None:
        kind, message = spec.error or ("api_error", "boom")
        return {
            **base,
            "status": "error",
            "error": {"kind": kind, "message": message},
            "counts": None,
            "compliance": None,
            "threshold": {"passed": None, "failures": []},
            "controls": None,
        }
    controls = load_report(SAMPLES / spec.sample)
    counts, ids = Counts.from_controls(controls), control_ids(controls)
    failures = parse_threshold(THRESHOLD, "threshold.yml").evaluate(counts, ids)
    return {
        **base,
        "status": "completed",
        "error": None,
        "counts": counts.to_dict(),
        "compliance": counts.compliance,
        "threshold": {"passed": not failures, "failures": failures},
        "controls": ids,
        "failed_controls": failed_controls(controls),
    }


def write_run(
    results: Path, specs: list[Spec] = FULL, fleet: str | None = None, finished: bool = True
) -> dict[str, Any]:
    """Write the specs' summaries (and reports) and, when finished, run.json; return it."""
    out = run_dir(results, RUN_ID)
    by_pod = {s.pod: s for s in specs}
    agg = Aggregator()
    for i, spec in enumerate(specs):
        summary = make_summary(spec, i, by_pod)
        if spec.sample is not None:
            shutil.copyfile(SAMPLES / spec.sample, out / f"{summary['scan_id']}.report.json")
        write_json_file(summary_path(out, summary["scan_id"]), summary)
        agg.add(summary)
    fleet_threshold = parse_fleet_threshold(yaml.safe_load(fleet), "fleet.yml") if fleet else None
    run = {
        "run_id": RUN_ID,
        "source": "submit",
        "profile": PROFILE,
        "created_at": "2026-03-01T10:15:00Z",
        "finished_at": "2026-03-01T10:27:41Z",
        **agg.result(fleet_threshold),
    }
    if finished:
        write_json_file(out / "run.json", run)
    return run


def validate_junit(text: str) -> ET.Element:
    """Valid against the vendored Jenkins JUnit schema, and numbers that are numbers."""
    from lxml import etree

    schema = etree.XMLSchema(etree.parse(str(JUNIT_XSD)))
    doc = etree.fromstring(text.encode())
    schema.assertValid(doc)
    root = ET.fromstring(text.encode())
    for el in root.iter():
        for attr in ("tests", "failures", "errors", "skipped"):
            if attr in el.attrib:
                assert int(el.attrib[attr]) >= 0
        if "time" in el.attrib:
            assert float(el.attrib["time"]) >= 0
    return root


NETWORK_REF = re.compile(
    r"""(?:src|href|action|srcset|poster|data)\s*=\s*["']?\s*(?:https?:)?//|@import|url\(""",
    re.IGNORECASE,
)


def render(fmt: str, run: Mapping[str, Any], summaries: Summaries = lambda: ()) -> str:
    """A report as one string, for tests that read it whole."""
    buf = StringIO()
    write_report(fmt, run, summaries, buf)
    return buf.getvalue()
