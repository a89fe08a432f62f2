"""`scanfleet demo`, run as a user runs it: the venv's console script, in an empty directory,
with HOME pointing at an empty directory and no KUBECONFIG, so nothing of the user's (or a
real cluster) can be reached. Its wall time is printed by bench/bench_demo.py, not asserted.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from scanfleet.testing.demo import FLEET
from tests.support.demo import CONSOLE_SCRIPT, run_demo, user_env
from tests.support.paths import ROOT

RUN_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")


def test_demo_runs_the_whole_job_and_exits_with_the_runs_code(tmp_path: Path) -> None:
    proc, cwd = run_demo(tmp_path)
    out = proc.stdout.splitlines()
    assert out, proc.stderr[-3000:]
    run_id = out[0]
    assert RUN_ID.match(run_id), proc.stdout
    run_dir = cwd / "scanfleet-demo" / run_id
    run = json.loads((run_dir / "run.json").read_text())
    assert proc.returncode == run["exit_code"], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    # The run went through the real pipeline: every pod scanned, the sandbox on, judged.
    pods = [(ns, pod) for ns, names in FLEET.items() for pod in names]
    assert run["targets"]["total"] == len(pods) == 8
    assert run["targets"]["error"] == 1
    assert run["targets"]["passed"] == 4
    assert run["targets"]["failed"] == 3
    assert run["sandbox"].startswith("landlock") or os.environ.get("SCANFLEET_SANDBOX") == "off"
    assert run["fleet_threshold"]["failures"], "the demo's fleet threshold is judged"
    assert f"throwaway identities: {len(pods)} minted, 0 left in the cluster" in out
    # The HTML report exists where it says, and names the targets that need attention.
    html_line = next(line for line in out if line.startswith("HTML report: "))
    html = Path(html_line.removeprefix("HTML report: "))
    assert html == run_dir / "report.html"
    page = html.read_text()
    assert run_id in page
    for ns in FLEET:
        assert ns in page
    for pod in ("billing", "db", "search", "ftp"):
        assert pod in page
    assert "scanfleet submit --all-namespaces" in proc.stdout  # what to run next
    # Nothing of the user's was touched: no ~/.kube, no results outside ./scanfleet-demo.
    assert list((tmp_path / "home").iterdir()) == []
    assert sorted(p.name for p in cwd.iterdir()) == ["scanfleet-demo"]


def test_demo_writes_where_it_is_told(tmp_path: Path) -> None:
    proc, cwd = run_demo(tmp_path, "--results-dir", str(tmp_path / "elsewhere"))
    run_id = proc.stdout.splitlines()[0]
    run = json.loads((tmp_path / "elsewhere" / run_id / "run.json").read_text())
    assert proc.returncode == run["exit_code"]
    assert (tmp_path / "elsewhere" / run_id / "report.html").is_file()
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize(
    "broker", ["http://localhost:6379/0", "redis://", "redis://:secret@host:notaport/0"]
)
def test_a_bad_broker_is_bad_input_before_anything_starts(tmp_path: Path, broker: str) -> None:
    proc, cwd = run_demo(tmp_path, "--broker", broker)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("scanfleet: error: --broker"), proc.stderr
    assert "secret" not in proc.stderr
    assert proc.stdout == ""
    assert list(cwd.iterdir()) == []


def test_a_run_that_cannot_start_says_why_with_submits_exit_code(tmp_path: Path) -> None:
    """The demo keeps the user's sandbox switch; a bad one stops `submit` before any run
    (exit 2), and the demo passes its reason and code on instead of a traceback."""
    home, cwd = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    cwd.mkdir()
    proc = subprocess.run(
        [str(CONSOLE_SCRIPT), "demo"],
        cwd=cwd,
        env={**user_env(home), "SCANFLEET_SANDBOX": "bogus"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("scanfleet: error: demo failed: scanfleet submit exited with code 2")
    assert "SCANFLEET_SANDBOX='bogus'" in last
    assert proc.stdout == ""


def test_the_readme_starts_with_the_demo_then_the_tests() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert commands == [
        "pip install . && scanfleet demo",
        "pip install -e '.[dev]' && python -m pytest",
    ]


def test_an_unreachable_broker_fails_in_seconds_before_anything_starts(
    tmp_path: Path, closed_port: int
) -> None:
    started = time.monotonic()
    proc, cwd = run_demo(tmp_path, "--broker", f"redis://:pw@127.0.0.1:{closed_port}/0")
    elapsed = time.monotonic() - started
    assert proc.returncode == 3, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"scanfleet: error: demo failed: cannot reach the broker at 127.0.0.1:{closed_port}"
    )
    assert "pw" not in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(cwd.iterdir()) == []
    assert elapsed < 30  # the bound is 5 s of connecting; the rest is start-up on a busy box
