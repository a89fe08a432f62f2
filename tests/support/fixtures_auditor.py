"""Fixtures for the stand-in auditor (scanfleet/testing/standin/cinc-auditor).

`standin_auditor` clears any SCANFLEET_STANDIN_* variable inherited from the outer
environment, so every test starts from the stand-in's defaults; `auditor_plan` and
`auditor_log` build on it and set their variables through monkeypatch (undone after the test).

The auditor sandbox is on in tests as in production. The stand-in is a Python script, so
`standin_auditor` lets the sandbox read what it runs on (its directory, the venv, the
interpreter's installation, the InSpec samples) and read and write `standin_io`, the one
directory where plans, logs and pid files the stand-in touches belong (never tmp_path
itself: that is where admin kubeconfigs live).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from scanfleet.core.settings import Settings
from scanfleet.scan.auditor import Host
from scanfleet.testing.auditor import read_paths, standin_environment, write_launcher
from tests.support.paths import SAMPLES, STANDIN

HOST_FROM_ENV = "Host.from_settings(Settings.from_env())"
"""`this_host()` in a subprocess script (import Host and Settings there)."""


def this_host() -> Host:
    """The Host a scanfleet process with this environment builds (read now, so a test's
    monkeypatch.setenv of SCANFLEET_SANDBOX* or the stand-in's variables counts)."""
    return Host.from_settings(Settings.from_env())


@pytest.fixture(scope="session")
def standin_launcher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An executable that runs the stand-in with this interpreter (sys.executable); see
    `scanfleet.testing.auditor.write_launcher`."""
    assert os.access(STANDIN, os.X_OK), f"{STANDIN} must be executable"
    return write_launcher(tmp_path_factory.mktemp("standin"))


def standin_read_paths() -> list[str]:
    """What the stand-in needs to read and execute beyond the sandbox's defaults: what
    `scanfleet.testing` lists, and the tests' own samples (tests/data/inspec-samples)."""
    return [*read_paths(), str(SAMPLES)]


@pytest.fixture
def standin_io(tmp_path: Path) -> Path:
    """The directory the sandboxed stand-in may write: plans, logs, pid files."""
    d = tmp_path / "standin-io"
    d.mkdir(mode=0o700, exist_ok=True)
    return d


@pytest.fixture
def standin_auditor(
    standin_launcher: Path, monkeypatch: pytest.MonkeyPatch, standin_io: Path
) -> str:
    """Absolute path of the stand-in auditor executable, with a clean stand-in environment."""
    for name in list(os.environ):
        if name.startswith(("SCANFLEET_STANDIN_", "SCANFLEET_SANDBOX")):
            monkeypatch.delenv(name)
    # kubectl (and anything else the stand-in runs) from this venv first; the sandbox lets
    # it read what it runs on and the tests' samples, and write standin_io.
    env = standin_environment(standin_launcher, writable=standin_io, readable=[SAMPLES])
    for name in ("PATH", "SCANFLEET_SANDBOX_ALLOW_READ", "SCANFLEET_SANDBOX_ALLOW_WRITE"):
        monkeypatch.setenv(name, env[name])
    return str(standin_launcher)


@pytest.fixture
def samples_dir() -> Path:
    """tests/data/inspec-samples: real InSpec reports, vendored (see SOURCES.md there)."""
    return SAMPLES


PlanWriter = Callable[..., Path]


@pytest.fixture
def auditor_plan(
    standin_auditor: str, standin_io: Path, monkeypatch: pytest.MonkeyPatch
) -> PlanWriter:
    """Write a stand-in plan and point SCANFLEET_STANDIN_PLAN at it.

        auditor_plan({"ns/pod/c": {"exit": 3, "stderr": "boom"}, "*": {"sleep": 1}})
        auditor_plan(**{"*": {...}})

    Keys: "NS/POD/CONTAINER", "NS/POD" or "*" (the most specific wins). Values: report,
    exit, sleep, stderr, stderr_bytes, stderr_tail, garbage, no_report, spawn_child,
    ignore_term, pid_file, wait_for. Calling again replaces the plan. Returns the plan file's path.
    """
    path = standin_io / "standin-plan.json"

    def write(plan: Mapping[str, Mapping[str, Any]] | None = None, **entries: Any) -> Path:
        data = {**(plan or {}), **entries}
        path.write_text(json.dumps(data, default=str))
        monkeypatch.setenv("SCANFLEET_STANDIN_PLAN", str(path))
        return path

    return write


class AuditorLog:
    """The stand-in's invocation log: one JSON object per invocation."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]


@pytest.fixture
def auditor_log(
    standin_auditor: str, standin_io: Path, monkeypatch: pytest.MonkeyPatch
) -> AuditorLog:
    """Set SCANFLEET_STANDIN_LOG to a temp file; call the result to read its records."""
    log = AuditorLog(standin_io / "standin-log.jsonl")
    monkeypatch.setenv("SCANFLEET_STANDIN_LOG", str(log.path))
    return log


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP port that is open and is not the API server's (for the sandbox's probes)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]
