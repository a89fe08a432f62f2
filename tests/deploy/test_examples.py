"""The files in examples/ load with the same strict loaders the commands use."""

from __future__ import annotations

from scanfleet.core.targets import load_targets_file
from scanfleet.judging.thresholds import load_fleet_threshold, load_threshold
from scanfleet.sweeps.spec import load_sweeps
from tests.support.paths import ROOT

EXAMPLES = ROOT / "examples"


def test_examples_load() -> None:
    assert load_threshold(EXAMPLES / "threshold.yml").source
    fleet = load_fleet_threshold(EXAMPLES / "fleet-threshold.yml")
    assert fleet.bounds_errors
    [sweep] = load_sweeps(EXAMPLES / "sweeps.yml")
    assert sweep.name == "nightly-prod"
    targets = load_targets_file(EXAMPLES / "targets.yml", None)
    assert [t.container for t in targets] == ["api", None]
