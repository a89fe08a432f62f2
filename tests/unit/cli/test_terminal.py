"""A quiet terminal (issue 18, item 4): on a TTY, human log lines at warning level, the
progress bar and a coloured summary; JSON lines when stderr is not a TTY or
SCANFLEET_LOG_FORMAT=json says so; -q and -v; "no threshold applied".

The TTY cases run the real CLI in a real pseudo-terminal (os.openpty): stdout and stderr
both on it, as in an operator's shell.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest

from scanfleet.testing.fakekube import FakeCluster
from tests.support.fixtures_fleet import CLI

SGR = re.compile(r"\x1b\[[0-9;]*m")
"""A colour/style escape sequence."""


def in_pty(args: list[str], env: dict[str, str], timeout: float = 90) -> tuple[int, str]:
    """Run the CLI on a pseudo-terminal; its exit code and everything it wrote there."""
    master, slave = os.openpty()
    # A terminal has a size (a fresh pty is 0x0, which leaves no room for the bar).
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        [*CLI, *args], stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, b"".join(chunks).decode("utf-8", "replace")


@pytest.fixture
def env(standin_auditor: str, tmp_path: Path, closed_port: int) -> dict[str, str]:
    e = dict(os.environ)
    for name in ("KUBECONFIG", "SCANFLEET_LOG_FORMAT", "NO_COLOR"):
        e.pop(name, None)
    e.update(
        SCANFLEET_AUDITOR=standin_auditor,
        SCANFLEET_RESULTS_DIR=str(tmp_path / "results"),
        SCANFLEET_BROKER_URL=f"redis://127.0.0.1:{closed_port}/0",
        TERM="xterm-256color",
    )
    return e


@pytest.fixture
def submit(admin_kubeconfig: Path, fake_cluster: FakeCluster) -> list[str]:
    return [
        "submit",
        "-n",
        "apps",
        "--local",
        "--profile",
        "p",
        "--kubeconfig",
        str(admin_kubeconfig),
    ]


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(ln) for ln in text.splitlines() if ln.startswith("{")]


def test_on_a_terminal_logs_are_human_warnings_with_a_bar_and_a_coloured_summary(
    env: dict[str, str], submit: list[str]
) -> None:
    code, out = in_pty(submit, env)
    assert code == 0, out
    assert '{"' not in out, "no JSON log line on a terminal"
    assert "run.finished" not in out  # info events stay below the warning level
    assert re.search(r"100%\|.*\| 2/2", out), "the progress bar, finished"
    assert "no threshold applied" in out
    # The summary's verdict is coloured (green, bold) on a terminal.
    assert "exit code: 0  \x1b[32m\x1b[1mOK\x1b[0m" in out, repr(out[-500:])


def test_no_color_removes_every_colour_but_keeps_the_rest(
    env: dict[str, str], submit: list[str]
) -> None:
    code, out = in_pty(["-v", *submit], {**env, "NO_COLOR": "1"})  # -v: info lines too
    assert code == 0, out
    assert not SGR.search(out), repr(out[-2000:])
    assert "run.finished" in out  # a console line (-v), not JSON
    assert '{"' not in out
    assert "exit code: 0  OK" in out


def test_quiet_hides_the_bar_and_verbose_shows_info_lines(
    env: dict[str, str], submit: list[str]
) -> None:
    code, quiet = in_pty(["-q", *submit], env)
    assert code == 0, quiet
    assert "it/s" not in quiet
    assert "target/s" not in quiet
    assert "100%" not in quiet
    assert "exit code: 0" in quiet  # the summary is the output, not a log line
    code, verbose = in_pty(["-v", *submit], env)
    assert code == 0, verbose
    assert "run.finished" in verbose
    assert "credentials.minted" in verbose


def test_json_lines_on_a_terminal_when_the_log_format_says_so(
    env: dict[str, str], submit: list[str]
) -> None:
    code, out = in_pty(submit, {**env, "SCANFLEET_LOG_FORMAT": "json"})
    assert code == 0, out
    events = {e["event"] for e in _json_lines(out)}
    assert {"credentials.minted", "run.finished"} <= events


def test_json_lines_when_stderr_is_not_a_terminal(env: dict[str, str], submit: list[str]) -> None:
    proc = subprocess.run(
        [*CLI, *submit], env=env, capture_output=True, text=True, timeout=90, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("{")]
    events = {json.loads(ln)["event"] for ln in lines}
    assert {"credentials.minted", "credentials.revoked", "run.finished"} <= events
    assert not SGR.search(proc.stdout + proc.stderr)  # nothing coloured into a pipe
    assert "%|" not in proc.stderr  # no progress bar between the JSON lines
    assert "no threshold applied" in proc.stdout


def test_a_run_with_a_threshold_counts_targets_that_met_it(
    env: dict[str, str], submit: list[str], tmp_path: Path
) -> None:
    threshold = tmp_path / "threshold.yml"
    threshold.write_text("compliance:\n  min: 0\n")
    proc = subprocess.run(
        [*CLI, *submit, "--threshold", str(threshold)],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "met threshold: 2  missed: 0" in proc.stdout
    assert "no threshold applied" not in proc.stdout
