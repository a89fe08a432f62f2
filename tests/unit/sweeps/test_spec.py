"""The sweeps file: strict validation naming the sweep and the key; `sweeps validate`."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from scanfleet.core.errors import SweepsFileError
from scanfleet.sweeps.spec import Sweep, load_sweeps

GOOD = """
sweeps:
  - name: nightly
    schedule: "0 2 * * *"
    all_contexts: true
    all_namespaces: true
    exclude_namespaces: [kube-system]
    profile: /profiles/baseline
    threshold: threshold.yml
    fleet_threshold: fleet.yml
    inputs: [inputs.yml]
    dedupe_images: true
  - name: payments-hourly
    schedule: "0 * * * 1-5"
    contexts: [prod-eu, prod-us]
    namespaces: [payments]
    selector: "app.kubernetes.io/part-of=payments,tier in (web,api)"
    profile: https://example.com/profile.tar.gz
"""


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "threshold.yml").write_text("compliance:\n  min: 80\n")
    (tmp_path / "fleet.yml").write_text("targets:\n  error:\n    max: 2\n")
    (tmp_path / "inputs.yml").write_text("x: 1\n")
    return tmp_path


def one(**over: Any) -> list[dict[str, Any]]:
    sweep: dict[str, Any] = {
        "name": "nightly",
        "schedule": "0 2 * * *",
        "all_namespaces": True,
        "profile": "/profiles/p",
    }
    sweep.update(over)
    return [{k: v for k, v in sweep.items() if v is not None}]


def test_valid_file_loads_with_paths_resolved_against_the_file(
    write_sweeps: Callable[..., Path], files: Path
) -> None:
    sweeps = load_sweeps(write_sweeps(GOOD))
    assert [s.name for s in sweeps] == ["nightly", "payments-hourly"]
    n, p = sweeps
    assert n.all_contexts
    assert n.all_namespaces
    assert n.dedupe_images
    assert n.exclude_namespaces == ("kube-system",)
    assert n.threshold == str(files / "threshold.yml")
    assert n.fleet_threshold == str(files / "fleet.yml")
    assert n.inputs == (str(files / "inputs.yml"),)
    assert n.source == "sweep:nightly"
    assert p.contexts == ("prod-eu", "prod-us")
    assert p.namespaces == ("payments",)
    assert not p.all_contexts
    assert p.threshold is None
    assert n.next_fire(datetime(2025, 1, 1, 3, 0, tzinfo=UTC)) == datetime(
        2025, 1, 2, 2, 0, tzinfo=UTC
    )
    # Weekdays only: Friday 2025-01-03 23:30 -> Monday 00:00
    assert p.next_fire(datetime(2025, 1, 3, 23, 30, tzinfo=UTC)) == datetime(
        2025, 1, 6, 0, 0, tzinfo=UTC
    )


def test_a_bare_list_is_accepted_and_round_trips_as_a_task_argument(
    write_sweeps: Callable[..., Path],
) -> None:
    (s,) = load_sweeps(write_sweeps(one()))
    assert Sweep.from_dict(s.to_dict()) == s


@pytest.mark.parametrize(
    ("over", "key", "words"),
    [
        ({"schedul": "0 2 * * *"}, "schedul", "unknown key"),
        ({"schedule": "61 * * * *"}, "schedule", "not a valid cron"),
        ({"schedule": "*/5 * * * * *"}, "schedule", "not a 5-field"),
        ({"schedule": "@daily"}, "schedule", "not a 5-field"),
        ({"schedule": "* * * *"}, "schedule", "not a 5-field"),
        ({"schedule": "0 0 30 2 *"}, "schedule", "never fires"),
        ({"profile": None}, "profile", "is required"),
        ({"schedule": None}, "schedule", "is required"),
        ({"namespaces": ["apps"]}, "all_namespaces", "conflicts with 'namespaces'"),
        ({"all_namespaces": None}, "namespaces", "is required"),
        ({"contexts": ["a"], "all_contexts": True}, "all_contexts", "conflicts"),
        ({"contexts": "prod"}, "contexts", "must be a list"),
        ({"dedupe_images": "yes"}, "dedupe_images", "true or false"),
        ({"exclude_namespaces": ["Kube_System"]}, "exclude_namespaces", "DNS-1123"),
        ({"selector": "app in (a"}, "selector", "label selector"),
        ({"inputs": ["missing.yml"]}, "inputs", "does not exist"),
        ({"threshold": "missing.yml"}, "threshold", "does not exist"),
        ({"profile": 3}, "profile", "non-empty string"),
    ],
)
def test_every_error_names_the_file_the_sweep_and_the_key(
    write_sweeps: Callable[..., Path], over: dict[str, Any], key: str, words: str
) -> None:
    path = write_sweeps(one(**over))
    with pytest.raises(SweepsFileError) as e:
        load_sweeps(path)
    msg = str(e.value)
    assert f"sweeps file '{path}'" in msg
    assert "sweep 'nightly'" in msg
    assert repr(key) in msg
    assert words in msg


def test_unknown_key_message_is_exact(write_sweeps: Callable[..., Path]) -> None:
    path = write_sweeps(one(schedul="x"), name="x.yml")
    with pytest.raises(
        SweepsFileError,
        match=r"sweeps file '.*x\.yml', sweep 'nightly': "
        r"unknown key 'schedul'",
    ):
        load_sweeps(path)


def test_duplicate_names_and_bad_names(write_sweeps: Callable[..., Path]) -> None:
    with pytest.raises(SweepsFileError, match=r"sweep 'nightly': key 'name': duplicate"):
        load_sweeps(write_sweeps(one() + one(schedule="5 * * * *")))
    with pytest.raises(SweepsFileError, match=r"sweep 'Night_ly': key 'name'.*DNS-1123"):
        load_sweeps(write_sweeps(one(name="Night_ly")))


def test_bad_threshold_files_are_loaded_and_rejected(
    write_sweeps: Callable[..., Path], tmp_path: Path
) -> None:
    (tmp_path / "t.yml").write_text("compliance:\n  minimum: 80\n")
    with pytest.raises(SweepsFileError) as e:
        load_sweeps(write_sweeps(one(threshold="t.yml")))
    assert "sweep 'nightly': key 'threshold'" in str(e.value)
    assert "compliance.minimum" in str(e.value)
    (tmp_path / "f.yml").write_text("targets:\n  errors:\n    max: 1\n")
    with pytest.raises(SweepsFileError, match=r"key 'fleet_threshold'.*targets\.errors"):
        load_sweeps(write_sweeps(one(fleet_threshold="f.yml")))


def test_file_level_errors(write_sweeps: Callable[..., Path]) -> None:
    with pytest.raises(SweepsFileError, match="not valid YAML"):
        load_sweeps(write_sweeps("sweeps: [\n"))
    with pytest.raises(SweepsFileError, match="has no sweeps"):
        load_sweeps(write_sweeps("sweeps: []\n"))
    with pytest.raises(SweepsFileError, match="unknown top-level key 'sweep'"):
        load_sweeps(write_sweeps({"sweep": one()}))
    with pytest.raises(SweepsFileError, match=r"sweep #1: must be a mapping"):
        load_sweeps(write_sweeps(["nightly"]))


def scanfleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from scanfleet.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_sweeps_validate_prints_a_line_per_sweep_and_exits_0(
    write_sweeps: Callable[..., Path], files: Path
) -> None:
    r = scanfleet("sweeps", "validate", str(write_sweeps(GOOD)))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("nightly  schedule: '0 2 * * *'  next: ")
    assert lines[0].endswith("T02:00:00Z")
    assert lines[1].startswith("payments-hourly  schedule: '0 * * * 1-5'  next: ")
    assert "2 sweeps OK" in lines[2]


def test_sweeps_validate_exits_2_with_the_error(write_sweeps: Callable[..., Path]) -> None:
    r = scanfleet("sweeps", "validate", str(write_sweeps(one(schedule="61 * * * *"))))
    assert r.returncode == 2
    assert "sweep 'nightly'" in r.stderr
    assert "'schedule'" in r.stderr
    assert r.stdout == ""
    r = scanfleet("sweeps", "validate", "/nonexistent/sweeps.yml")
    assert r.returncode == 2
    assert "cannot read sweeps file" in r.stderr


def test_beat_refuses_a_bad_sweeps_file_before_scheduling(
    write_sweeps: Callable[..., Path],
) -> None:
    r = scanfleet("beat", "--sweeps", str(write_sweeps(one(schedul="0 * * * *"))))
    assert r.returncode == 2
    assert "unknown key 'schedul'" in r.stderr


def test_sweeps_validate_refuses_a_token_ttl_without_the_minting_margin(
    write_sweeps: Callable[..., Path], files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCANFLEET_TOKEN_TTL", "900")
    monkeypatch.setenv("SCANFLEET_SCAN_TIMEOUT", "800")
    r = scanfleet("sweeps", "validate", str(write_sweeps(GOOD)))
    assert r.returncode == 2
    assert "token TTL 900s must exceed the scan timeout 800s by at least 120s" in r.stderr
    assert r.stdout == ""
