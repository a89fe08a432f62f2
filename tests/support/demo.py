"""Running `scanfleet demo` as a user who never configured scanfleet or kubectl would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CONSOLE_SCRIPT = Path(sys.executable).parent / "scanfleet"


def user_env(home: Path) -> dict[str, str]:
    """The environment of a user who never configured scanfleet or kubectl."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SCANFLEET_", "KUBECONFIG", "COV_CORE"))
    }
    env["HOME"] = str(home)
    return env


def run_demo(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    assert CONSOLE_SCRIPT.is_file(), "pip install -e '.[dev]' installs the scanfleet script"
    home, cwd = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    cwd.mkdir()
    proc = subprocess.run(
        [str(CONSOLE_SCRIPT), "demo", *args],
        cwd=cwd,
        env=user_env(home),
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    return proc, cwd
