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
import shlex
import shutil
import socket
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from scanfleet.core.settings import Settings
from scanfleet.scan.auditor import Host
from tests.support.paths import SAMPLES, STANDIN
from tests.support.tools import path_with_venv_bin

HOST_FROM_ENV = "Host.from_settings(Settings.from_env())"
"""`this_host()` in a subprocess script (import Host and Settings there)."""


def this_host() -> Host:
    """The Host a scanfleet process with this environment builds (read now, so a test's
    monkeypatch.setenv of SCANFLEET_SANDBOX* or the stand-in's variables counts)."""
    return Host.from_settings(Settings.from_env())


@pytest.fixture(scope="session")
def standin_launcher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An executable that runs the stand-in with this interpreter (sys.executable).

    The stand-in's `#!/usr/bin/env python3` would pick whatever `python3` is first on the
    (filtered) PATH the auditor gets: a version-manager shim there needs variables the
    runner drops, or runs another Python. `exec` keeps the pid, so process-group checks hold.
    """
    assert os.access(STANDIN, os.X_OK), f"{STANDIN} must be executable"
    launcher = tmp_path_factory.mktemp("standin") / "cinc-auditor"
    launcher.write_text(
        f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(STANDIN))} "$@"\n'
    )
    launcher.chmod(0o755)
    return launcher


def standin_read_paths() -> list[str]:
    """What the stand-in needs to read and execute beyond the sandbox's defaults."""
    paths = [str(STANDIN.parent), sys.prefix, sys.base_prefix, str(SAMPLES)]
    kubectl = shutil.which("kubectl")
    if kubectl:
        paths.append(os.path.dirname(os.path.realpath(kubectl)))
    return paths


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
    # kubectl (and anything else the stand-in runs) from this venv first.
    monkeypatch.setenv("PATH", path_with_venv_bin(os.environ.get("PATH")))
    monkeypatch.setenv(
        "SCANFLEET_SANDBOX_ALLOW_READ",
        os.pathsep.join([*standin_read_paths(), str(standin_launcher.parent)]),
    )
    monkeypatch.setenv("SCANFLEET_SANDBOX_ALLOW_WRITE", str(standin_io))
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
