"""Drift between two runs: what changed, per target (issue #5, part 3).

Targets are matched by `(context, namespace, pod, container)`. For a target in both runs:
controls that newly fail (ids under `failed.*` of the target summary's `controls` in run B
but not in run A) and controls that were fixed (failed in A, not failed in B, with what
they are in B: passed, skipped, ... or absent), and a status change (completed <-> error).
A target only in B appeared; only in A, disappeared. A target that errored on either side
has no control lists to compare: only its status change is reported.

Pure over two run directories: it reads target summaries and writes nothing, except
`write_sweep_drift`, which the run's finalizer calls to put `drift.json` next to `run.json`
for a sweep run. Never reads reports or anything outside the results directory.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

from scanfleet.core.errors import ResultsUnavailable
from scanfleet.judging.documents import DriftChanges, DriftDocument, Outcome, judge
from scanfleet.store.files import RUN_ID_RE
from scanfleet.store.results import RUN_FILE, ResultsStore, as_results, iter_summaries, read_json

TargetKey = tuple[str, str, str, str]
DRIFT_FILE = "drift.json"


def target_key(summary: Mapping[str, Any]) -> TargetKey:
    t = summary.get("target") or {}
    return (
        str(t.get("context") or ""),
        str(t.get("namespace") or ""),
        str(t.get("pod") or ""),
        str(t.get("container") or ""),
    )


def _target_dict(key: TargetKey) -> dict[str, str]:
    return dict(zip(("context", "namespace", "pod", "container"), key, strict=True))


def _by_status(summary: Mapping[str, Any]) -> dict[str, dict[str, str]] | None:
    """{status: {control id: severity}} of a summary `judge` accepts; None for an error."""
    verdict = judge(summary)
    if verdict.outcome is Outcome.ERROR:
        return None
    return {
        status: {cid: sev for sev, ids in by_sev.items() for cid in ids}
        for status, by_sev in (verdict.ids or {}).items()
    }


def _index(summaries: Iterable[Mapping[str, Any]]) -> dict[TargetKey, Mapping[str, Any]]:
    return {target_key(s): s for s in summaries}


def diff_target(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any] | None:
    """What changed for one target between two runs; None when nothing did."""
    status_a, status_b = a.get("status"), b.get("status")
    ca, cb = _by_status(a), _by_status(b)
    newly: list[dict[str, str]] = []
    fixed: list[dict[str, str]] = []
    if ca is not None and cb is not None:
        failed_a, failed_b = ca.get("failed", {}), cb.get("failed", {})
        newly = [{"id": i, "severity": failed_b[i]} for i in sorted(set(failed_b) - set(failed_a))]
        for i in sorted(set(failed_a) - set(failed_b)):
            now = next((s for s, ids in cb.items() if i in ids), "absent")
            fixed.append({"id": i, "severity": failed_a[i], "now": now})
    if status_a == status_b and not newly and not fixed:
        return None
    out: dict[str, Any] = {
        "target": _target_dict(target_key(b)),
        "newly_failing": newly,
        "fixed": fixed,
    }
    if status_a != status_b:
        out["status_change"] = {"from": status_a, "to": status_b}
        err = b.get("error")
        if isinstance(err, Mapping):
            out["error"] = {"kind": err.get("kind"), "message": err.get("message")}
    return out


def diff_summaries(a: Iterable[Mapping[str, Any]], b: Iterable[Mapping[str, Any]]) -> DriftChanges:
    """The drift from summaries A (older) to summaries B (newer)."""
    ia, ib = _index(a), _index(b)
    changed = []
    for key in sorted(set(ia) & set(ib)):
        d = diff_target(ia[key], ib[key])
        if d is not None:
            changed.append(d)
    appeared = [
        {"target": _target_dict(k), "status": ib[k].get("status")}
        for k in sorted(set(ib) - set(ia))
    ]
    disappeared = [
        {"target": _target_dict(k), "status": ia[k].get("status")}
        for k in sorted(set(ia) - set(ib))
    ]
    return {
        "changed": changed,
        "appeared": appeared,
        "disappeared": disappeared,
        "totals": {
            "targets_changed": len(changed),
            "newly_failing": sum(len(c["newly_failing"]) for c in changed),
            "fixed": sum(len(c["fixed"]) for c in changed),
            "status_changes": sum(1 for c in changed if "status_change" in c),
            "appeared": len(appeared),
            "disappeared": len(disappeared),
        },
    }


RunRef = tuple[ResultsStore, str]
"""A run in a results store: (store, run id)."""


def run_ref(run_dir: Path | RunRef) -> RunRef:
    """A run directory path (`<results>/<run_id>`) as a (store, run id) reference."""
    if isinstance(run_dir, Path):
        return as_results(run_dir.parent), run_dir.name
    return run_dir


def diff_runs(dir_a: Path | RunRef, dir_b: Path | RunRef) -> DriftDocument:
    """The drift between two runs (A older, B newer): run directories or (store, run id)."""
    (store_a, run_a), (store_b, run_b) = run_ref(dir_a), run_ref(dir_b)
    drift = diff_summaries(iter_summaries(store_a, run_a), iter_summaries(store_b, run_b))
    return {
        "run_a": run_a,
        "run_b": run_b,
        "changed": drift["changed"],
        "appeared": drift["appeared"],
        "disappeared": drift["disappeared"],
        "totals": drift["totals"],
    }


def previous_run(results_dir: ResultsStore | Path, run_id: str, source: str) -> str | None:
    """The newest run older than `run_id` whose run.json has this `source`."""
    results = as_results(results_dir)
    older = sorted((r for r in results.run_ids() if r < run_id), reverse=True)
    for r in older:
        try:
            run = read_json(results, r, RUN_FILE)
        except FileNotFoundError:
            continue  # unfinished runs are no baseline
        except (OSError, ValueError, ResultsUnavailable):
            continue  # nor are broken ones
        if isinstance(run, Mapping) and run.get("source") == source:
            return r
    return None


def write_sweep_drift(
    results_dir: ResultsStore | Path, run: Mapping[str, Any]
) -> DriftDocument | None:
    """For a finished sweep run (its run.json body), write `drift.json` in its directory.

    The baseline is the previous finished run of the same sweep (same `source`). The first
    run of a sweep gets a drift.json with `run_a: null` and no changes. Runs that are not
    sweep runs are left alone (returns None).
    """
    source = str(run.get("source") or "")
    run_id = str(run.get("run_id") or "")
    if not source.startswith("sweep:") or not RUN_ID_RE.fullmatch(run_id):
        return None
    results = as_results(results_dir)
    prev = previous_run(results, run_id, source)
    if prev is None:
        nothing = diff_summaries([], [])
        drift: DriftDocument = {
            "run_a": None,
            "run_b": run_id,
            "changed": nothing["changed"],
            "appeared": nothing["appeared"],
            "disappeared": nothing["disappeared"],
            "totals": nothing["totals"],
            "note": "first run of this sweep: nothing to compare with",
        }
    else:
        drift = diff_runs((results, prev), (results, run_id))
    drift = cast(DriftDocument, {"source": source, **drift})  # "source" first in the file
    results.write_json(run_id, DRIFT_FILE, drift)
    return drift


def format_drift(drift: Mapping[str, Any]) -> list[str]:
    """Human-readable lines for `scanfleet diff`."""

    def ref(t: Mapping[str, str]) -> str:
        return f"{t['context']}:{t['namespace']}/{t['pod']}/{t['container']}"

    lines = [f"drift {drift.get('run_a')} -> {drift.get('run_b')}"]
    for c in drift["changed"]:
        r = ref(c["target"])
        if "status_change" in c:
            sc = c["status_change"]
            lines.append(f"STATUS {r}: {sc['from']} -> {sc['to']}")
        lines.extend(f"NEW FAIL {r}: {x['id']} ({x['severity']})" for x in c["newly_failing"])
        lines.extend(f"FIXED {r}: {x['id']} (now {x['now']})" for x in c["fixed"])
    lines.extend(f"APPEARED {ref(x['target'])} ({x['status']})" for x in drift["appeared"])
    lines.extend(f"GONE {ref(x['target'])} ({x['status']})" for x in drift["disappeared"])
    t = drift["totals"]
    lines.append(
        f"targets changed: {t['targets_changed']}  newly failing: {t['newly_failing']}  "
        f"fixed: {t['fixed']}  status changes: {t['status_changes']}  "
        f"appeared: {t['appeared']}  disappeared: {t['disappeared']}"
    )
    return lines
