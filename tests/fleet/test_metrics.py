"""Worker metrics and beat's posture, scraped over HTTP from real processes.

- A fleet run on a worker with three prefork children: the counts scraped from the parent
  equal the target summaries on disk (one child's registry alone would undercount).
- A sweep tick on a real worker, then `scanfleet beat`: its posture gauges equal the run's
  run.json and drift.json, and a restarted beat reports the same.
Every scrape passes `promtool check metrics`. The in-process tests below pin each hook.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from celery import Celery

from scanfleet.core import metrics
from scanfleet.core.errors import BadInput
from scanfleet.core.settings import PROMETHEUS_MULTIPROC_ENV, Settings
from scanfleet.identity.janitor import Finding, JanitorReport
from scanfleet.identity.mint import MANAGED_BY
from scanfleet.kube.client import KubeClient
from scanfleet.store.files import iter_summaries
from scanfleet.sweeps.posture import PostureCollector, interval_seconds, janitor_totals
from scanfleet.sweeps.spec import load_sweeps
from scanfleet.worker.app import JANITOR_TASK, QUEUE
from tests.support.fixtures_fleet import (
    CLI,
    FleetClusters,
    RedisServer,
    Worker,
    free_port,
    run_cli,
    wait_for,
)
from tests.support.fixtures_metrics import check_metrics, samples, scrape, value
from tests.support.fixtures_ops import leave_orphans
from tests.support.sweep_runs import runs_of, send_tick

DISCOVER = [
    "--all-contexts",
    "--all-namespaces",
    "--exclude-namespace",
    "kube-system",
    "--profile",
    "profile-x",
]


def _on_disk(results: Path) -> Counter[tuple[str, str, str]]:
    found: Counter[tuple[str, str, str]] = Counter()
    for run in results.iterdir():
        for s in iter_summaries(run):
            if s.get("covered_by") is None:
                kind = (s.get("error") or {}).get("kind") or ""
                found[(s["target"]["context"], s["status"], kind)] += 1
    return found


def _scraped(text: str) -> Counter[tuple[str, str, str]]:
    found: Counter[tuple[str, str, str]] = Counter()
    for labels, v in samples(text)["scanfleet_scans_total"].items():
        d = dict(labels)
        if v:
            found[(d["context"], d["status"], d["error_kind"])] = int(v)
    return found


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_worker_counts_from_every_child_equal_the_summaries_on_disk(
    fleet_env: dict[str, str],
    fleet_clusters: FleetClusters,
    make_worker: Callable[..., Worker],
) -> None:
    port = free_port()
    env = {**fleet_env, "SCANFLEET_STANDIN_SLEEP": "0.5"}
    make_worker({**env, "SCANFLEET_METRICS_PORT": str(port)}, concurrency=3)
    before = scrape(port)
    check_metrics(before)
    assert value(before, "scanfleet_queue_messages") == 0
    assert "scanfleet_scans_total" not in samples(before)

    ok = run_cli(["submit", *DISCOVER, "--wait"], env, timeout=120)
    assert ok.returncode == 0, ok.stderr[-3000:]
    bad = run_cli(
        ["submit", "--context", "west", "apps/missing", "--profile", "p", "--wait"],
        env,
        timeout=120,
    )
    assert bad.returncode == 3, bad.stderr[-3000:]

    text = scrape(port)
    check_metrics(text)
    on_disk = _on_disk(Path(env["SCANFLEET_RESULTS_DIR"]))
    assert sum(on_disk.values()) == 9
    assert on_disk[("west", "error", "target_not_found")] == 1
    assert _scraped(text) == on_disk
    scanned = sum(v for (_, status, _), v in on_disk.items() if status == "completed")
    got = samples(text)
    for phase in ("mint", "audit", "revoke", "total"):
        count = sum(
            v
            for labels, v in got["scanfleet_scan_duration_seconds_count"].items()
            if ("phase", phase) in labels
        )
        assert count == scanned, phase
    assert value(text, "scanfleet_identities_active") == 0
    assert value(text, "scanfleet_cleanup_incomplete_total") == 0
    assert {v for v in got["scanfleet_cluster_slots_in_use"].values()} == {0}
    creates = {
        dict(k)["context"]: v
        for k, v in got["scanfleet_api_requests_total"].items()
        if dict(k)["verb"] == "create" and dict(k)["code"] == "2xx"
    }
    # ServiceAccount, Role, RoleBinding and a token per scan, per cluster: 4 scans each.
    assert creates == {"east": 16, "west": 16}
    assert value(text, "scanfleet_queue_messages") == 0
    for labels in got["scanfleet_scans_total"]:
        assert {k for k, _ in labels} == {"context", "status", "error_kind"}


SWEEPS = (
    "- name: nightly\n  schedule: '0 3 * * *'\n  all_contexts: true\n"
    "  namespaces: [apps]\n  selector: app=web\n  profile: profile-x\n"
    "- name: weekdays\n  schedule: '30 1 * * 1-5'\n  contexts: [east]\n"
    "  namespaces: [ops]\n  profile: profile-x\n"
)


def send_task(redis_url: str, name: str) -> None:
    client = Celery("test-client", broker=redis_url)
    client.conf.task_serializer = "json"
    try:
        client.send_task(name, queue=QUEUE)
    finally:
        client.close()


class Beat:
    def __init__(self, env: dict[str, str], sweeps: Path, port: int, log: Path) -> None:
        self.port = port
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            [*CLI, "beat", "--sweeps", str(sweeps), "--metrics-port", str(port)],
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def scrape(self) -> str:
        def up() -> str | None:
            try:
                return scrape(self.port)
            except OSError:
                return None

        text: str = wait_for(up, 30, "beat's /metrics to answer", every=0.2)
        return text

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)
        self._out.close()


@pytest.fixture
def make_beat(tmp_path: Path) -> Iterator[Callable[[dict[str, str], Path], Beat]]:
    beats: list[Beat] = []

    def factory(env: dict[str, str], sweeps: Path) -> Beat:
        beats.append(Beat(env, sweeps, free_port(), tmp_path / f"beat-{len(beats)}.log"))
        return beats[-1]

    yield factory
    for b in beats:
        if b.proc.poll() is None:
            b.stop()


def _expected_posture(results: Path, run: dict[str, Any]) -> dict[str, float]:
    drift = json.loads((results / run["run_id"] / "drift.json").read_text())
    finished = datetime.fromisoformat(run["finished_at"].replace("Z", "+00:00"))
    out = {
        "last": finished.timestamp(),
        "threshold": 1.0 if run["targets"]["failed"] == 0 else 0.0,
        "regressed": float(drift["totals"]["newly_failing"]),
        "fixed": float(drift["totals"]["fixed"]),
    }
    out.update({f"targets:{o}": float(run["targets"][o]) for o in ("passed", "failed", "error")})
    out.update({f"ctx:{c}": float(g["compliance"]) for c, g in run["by_cluster"].items()})
    return out


def _posture(text: str, sweep: str) -> dict[str, float]:
    got = samples(text)
    out: dict[str, float] = {}
    for name, key in (
        ("scanfleet_sweep_last_finished_timestamp_seconds", "last"),
        ("scanfleet_sweep_threshold_passed", "threshold"),
    ):
        out[key] = got[name][(("sweep", sweep),)]
    for labels, v in got["scanfleet_sweep_targets"].items():
        if ("sweep", sweep) in labels:
            out[f"targets:{dict(labels)['outcome']}"] = v
    for labels, v in got["scanfleet_sweep_drift_controls"].items():
        if ("sweep", sweep) in labels:
            out[dict(labels)["change"]] = v
    for labels, v in got["scanfleet_sweep_compliance_percent"].items():
        d = dict(labels)
        if d["sweep"] == sweep and "namespace" not in d:
            out[f"ctx:{d['context']}"] = v
    return out


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.leaves_leftovers(
    "the janitor's Redis totals have no TTL by design (they survive a beat restart), and "
    "the identity without an expiry annotation is one the janitor must leave alone"
)
def test_beat_posture_after_a_sweep_tick_equals_run_json_and_survives_a_restart(
    fleet_env: dict[str, str],
    redis_server: RedisServer,
    make_worker: Callable[..., Worker],
    fleet_clusters: FleetClusters,
    make_beat: Callable[[dict[str, str], Path], Beat],
    tmp_path: Path,
) -> None:
    sweeps_file = tmp_path / "sweeps.yml"
    sweeps_file.write_text(SWEEPS)
    nightly, _weekdays = load_sweeps(sweeps_file)
    env = {**fleet_env, "SCANFLEET_METRICS_PER_NAMESPACE": "1"}
    results = Path(env["SCANFLEET_RESULTS_DIR"])
    make_worker(env, concurrency=2)
    beat = make_beat(env, sweeps_file)
    empty = beat.scrape()
    check_metrics(empty)
    assert value(empty, "scanfleet_sweep_interval_seconds", sweep="nightly") == 86400
    # Friday 01:30 to Monday 01:30: the longest gap of a weekday schedule.
    assert value(empty, "scanfleet_sweep_interval_seconds", sweep="weekdays") == 3 * 86400
    assert "scanfleet_sweep_last_finished_timestamp_seconds" not in samples(empty)

    send_tick(redis_server.url, nightly.to_dict())
    [run] = wait_for(lambda: runs_of(results, "sweep:nightly"), 90, "the sweep run")
    text = beat.scrape()
    check_metrics(text)
    assert _posture(text, "nightly") == _expected_posture(results, run)
    per_ns = {
        dict(k)["context"]: v
        for k, v in samples(text)["scanfleet_sweep_compliance_percent"].items()
        if ("namespace", "apps") in k
    }
    assert per_ns == {c: float(g["compliance"]) for c, g in run["by_cluster"].items()}
    assert not [
        k for k in samples(text)["scanfleet_sweep_threshold_passed"] if ("sweep", "weekdays") in k
    ]  # never ran: no posture, only its interval

    # A janitor pass on the worker: one expired identity deleted, one it may not judge.
    kube = KubeClient(str(fleet_clusters.kubeconfig), "east")
    leave_orphans(
        kube, "apps", "dead0000000000d1", "run1", datetime.now(UTC) - timedelta(hours=2), 3600
    )
    kube.create_object(
        "ServiceAccount",
        "ops",
        {"metadata": {"name": "scanfleet-noexpiry", "labels": {MANAGED_BY: "scanfleet"}}},
    )  # not ours
    send_task(redis_server.url, JANITOR_TASK)

    def janitor_counted() -> str | None:
        t = beat.scrape()
        return t if value(t, "scanfleet_janitor_deleted_total", kind="Role") else None

    text = wait_for(janitor_counted, 60, "beat to serve the janitor's count")
    check_metrics(text)
    assert {
        k: value(text, "scanfleet_janitor_deleted_total", kind=k)
        for k in ("RoleBinding", "Role", "ServiceAccount")
    } == {"RoleBinding": 1, "Role": 1, "ServiceAccount": 1}
    assert value(text, "scanfleet_janitor_foreign_total") == 1

    beat.stop()
    again = make_beat(env, sweeps_file).scrape()
    assert _posture(again, "nightly") == _posture(text, "nightly")
    assert value(again, "scanfleet_janitor_deleted_total", kind="Role") == 1


# -- in-process: each hook, against this process's registry -----------------------------


def _get(name: str, **labels: str) -> float:
    return metrics.registry().get_sample_value(name, labels) or 0.0


def test_a_redelivered_or_covered_result_is_not_a_scan() -> None:
    summary = {
        "target": {"context": "c1"},
        "status": "error",
        "covered_by": None,
        "error": {"kind": "timeout", "message": "x"},
        "duration_s": 2.0,
    }
    labels = {"context": "c1", "status": "error", "error_kind": "timeout"}
    before = _get("scanfleet_scans_total", **labels)
    metrics.scan_recorded(summary, 1)
    metrics.scan_recorded(summary, 0)
    metrics.scan_recorded({**summary, "covered_by": "other"}, 1)
    assert _get("scanfleet_scans_total", **labels) == before + 1


def test_api_requests_are_counted_by_verb_and_code() -> None:
    class Refused(Exception):
        status = 403

    def refused() -> None:
        raise Refused

    def get(code: str, verb: str) -> float:
        return _get("scanfleet_api_requests_total", context="c2", verb=verb, code=code)

    metrics.api_call("c2", "get", lambda: 1)()
    with pytest.raises(Refused):
        metrics.api_call("c2", "create", refused)()

    def unreachable() -> None:
        raise ConnectionRefusedError("no route")

    with pytest.raises(ConnectionRefusedError, match="no route"):
        metrics.api_call("c2", "list", unreachable)()
    assert (get("2xx", "get"), get("403", "create"), get("unreachable", "list")) == (1, 1, 1)


def test_identity_phases_keep_the_active_gauge_and_the_incomplete_count() -> None:
    class Kube:
        context = "c3"

    active = _get("scanfleet_identities_active")
    incomplete = _get("scanfleet_cleanup_incomplete_total")
    ok = metrics.identity_phases(Kube())
    ok.minted()
    assert _get("scanfleet_identities_active") == active + 1
    ok.revoking()
    ok.revoked("complete")
    failed_mint = metrics.identity_phases(Kube())
    failed_mint.revoking()
    failed_mint.revoked("incomplete")
    assert _get("scanfleet_identities_active") == active
    assert _get("scanfleet_cleanup_incomplete_total") == incomplete + 1
    counts = {
        p: _get("scanfleet_scan_duration_seconds_count", context="c3", phase=p)
        for p in ("mint", "audit", "revoke")
    }
    assert counts == {"mint": 2, "audit": 1, "revoke": 2}


def test_queue_messages_sum_every_priority_of_the_queue() -> None:
    lengths = {"q": 2, "q\x06\x163": 1, "q\x06\x169": 4, "other": 100}
    reg = metrics.registry(lambda k: lengths.get(k, 0), "q")
    assert reg.get_sample_value("scanfleet_queue_messages") == 7


def test_janitor_totals_accumulate_in_redis_and_beat_serves_them(tmp_path: Path) -> None:
    r = fakeredis.FakeRedis(decode_responses=True)
    f = Finding("c", "Role", "ns", "scanfleet-x", None)
    report = JanitorReport(dry_run=False, deleted=[f, f], warnings=[f], foreign=[f])
    janitor_totals(r, "pfx", report)
    janitor_totals(r, "pfx", report)
    janitor_totals(r, "pfx", JanitorReport(dry_run=True, deleted=[f]))
    collector = PostureCollector([], tmp_path, r, "pfx")
    got = {
        (m.name, s.labels.get("kind")): s.value
        for m in collector.collect()
        for s in m.samples
        if m.name.startswith("scanfleet_janitor")
    }
    assert got == {
        ("scanfleet_janitor_deleted", "RoleBinding"): 0,
        ("scanfleet_janitor_deleted", "Role"): 4,
        ("scanfleet_janitor_deleted", "ServiceAccount"): 0,
        ("scanfleet_janitor_foreign", None): 4,
    }  # warnings and not-ours


def test_sweep_interval_is_the_longest_gap_of_the_cron() -> None:
    now = datetime(2026, 11, 30, tzinfo=UTC)
    assert interval_seconds("*/5 * * * *", now) == 300
    assert interval_seconds("0 3 1 * *", now) == 31 * 86400


def test_a_child_that_died_without_a_goodbye_no_longer_counts_in_live_gauges(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Live gauges (slots, identities) of a SIGKILLed pool child vanish at the next scrape;
    a living child's stay."""
    directory = tmp_path / "mp"
    directory.mkdir()
    child = (
        "import os, sys, time\nfrom scanfleet.core import metrics\n"
        "metrics.slot_acquired(sys.argv[1]); metrics.identity_phases(None).minted()\n"
        "print('ready', flush=True)\n"
        "time.sleep(60) if sys.argv[2] == 'stay' else os._exit(0)\n"
    )
    env = {**os.environ, PROMETHEUS_MULTIPROC_ENV: str(directory)}
    dead = subprocess.run(
        [sys.executable, "-c", child, "gone", "die"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dead.stdout.strip() == "ready"
    alive = subprocess.Popen(
        [sys.executable, "-c", child, "held", "stay"], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert alive.stdout is not None
        assert alive.stdout.readline().strip() == "ready"
        monkeypatch.setenv(PROMETHEUS_MULTIPROC_ENV, str(directory))
        reg = metrics.registry()
        assert reg.get_sample_value("scanfleet_cluster_slots_in_use", {"context": "held"}) == 1
        assert reg.get_sample_value("scanfleet_cluster_slots_in_use", {"context": "gone"}) in (
            None,
            0,
        )
        assert reg.get_sample_value("scanfleet_identities_active") == 1
    finally:
        alive.kill()
        alive.wait(10)
        if alive.stdout is not None:
            alive.stdout.close()


def test_metrics_settings_come_from_the_environment() -> None:
    s = Settings.from_env(
        {"SCANFLEET_METRICS_PORT": "9808", "SCANFLEET_METRICS_PER_NAMESPACE": "1"}
    )
    assert (s.metrics_port, s.metrics_per_namespace) == (9808, True)
    assert (Settings.from_env({}).metrics_port, Settings.from_env({}).metrics_per_namespace) == (
        0,
        False,
    )
    with pytest.raises(BadInput, match="SCANFLEET_METRICS_PORT"):
        Settings.from_env({"SCANFLEET_METRICS_PORT": "ninety"})
    with pytest.raises(BadInput, match="SCANFLEET_METRICS_PER_NAMESPACE"):
        Settings.from_env({"SCANFLEET_METRICS_PER_NAMESPACE": "yes"})
