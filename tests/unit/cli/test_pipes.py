"""Output that pipes and kubectl habits (issue 18, item 3), through the real CLI.

`--json` is one JSON document on stdout (holding `run_id`); without it the run id is alone
on the first line. `-n`/`-A`/`-l`/`--context`, `--results-dir` on every command (`--output
DIR` still works), durations with units, `runs`, `latest`, `status --watch`, `diff
--exit-code` and `completion`.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from scanfleet.testing.fakekube import FakeCluster
from tests.support.fixtures_fleet import CLI
from tests.support.fixtures_ops import make_run, summary
from tests.support.tools import wait_until


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return tmp_path / "results"


@pytest.fixture
def overrides(standin_auditor: str, closed_port: int) -> dict[str, str]:
    return {
        "SCANFLEET_AUDITOR": standin_auditor,
        "SCANFLEET_LOG_FORMAT": "json",
        "SCANFLEET_BROKER_URL": f"redis://127.0.0.1:{closed_port}/0",  # local runs need none
    }


def environment(overrides: dict[str, str]) -> dict[str, str]:
    """This process's environment now (stand-in plans set by monkeypatch included)."""
    e = {**os.environ, **overrides}
    e.pop("KUBECONFIG", None)
    e.pop("SCANFLEET_RESULTS_DIR", None)
    return e


Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli(overrides: dict[str, str]) -> Cli:
    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *args],
            env=environment(overrides),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return run


@pytest.fixture
def kube(admin_kubeconfig: Path) -> list[str]:
    return ["--kubeconfig", str(admin_kubeconfig), "--context", "fake", "--profile", "p"]


def test_scan_json_is_one_document_holding_the_run_id(
    cli: Cli, kube: list[str], results: Path, fake_cluster: FakeCluster
) -> None:
    r = cli("scan", "apps/web/app", *kube, "--results-dir", str(results), "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    run = json.loads(r.stdout)  # the whole of stdout: `scanfleet scan ... --json | jq`
    assert (results / run["run_id"] / "run.json").is_file()
    assert run["targets"]["total"] == 1


def test_submit_local_json_is_one_document_and_plain_output_leads_with_the_run_id(
    cli: Cli, kube: list[str], results: Path, fake_cluster: FakeCluster
) -> None:
    r = cli("submit", "-n", "apps", "-l", "app=web", *kube, "--local", "--output", str(results))
    assert r.returncode == 0, r.stderr[-2000:]
    first = r.stdout.splitlines()[0]
    assert (results / first / "run.json").is_file()  # the run id alone on the first line
    j = cli("submit", "-A", "--exclude-namespace", "other", *kube, "--local", "--json")
    assert j.returncode == 0, j.stderr[-2000:]
    run = json.loads(j.stdout)
    assert run["run_id"] != first
    assert run["targets"]["total"] == 2  # web's app and sidecar: -A found them


def test_durations_take_units_and_plain_seconds(
    cli: Cli, kube: list[str], write_sweeps: Callable[..., Path]
) -> None:
    # 5m is 300 s: below the TokenRequest minimum, so check_ttl names it in seconds.
    r = cli("scan", "apps/web/app", *kube, "--token-ttl", "5m")
    assert r.returncode == 2
    assert "token TTL 300s is out of range" in r.stderr
    r = cli("scan", "apps/web/app", *kube, "--token-ttl", "1h", "--timeout", "1h")
    assert r.returncode == 2
    assert "token TTL 3600s must exceed the scan timeout 3600s" in r.stderr
    r = cli("scan", "apps/web/app", *kube, "--timeout", "10x")
    assert r.returncode == 2
    assert "'10x' is not a duration" in r.stderr
    r = cli("beat", "--sweeps", str(write_sweeps([])), "--lock-ttl", "30s")
    assert r.returncode == 2
    assert "'30s' is shorter than 60s" in r.stderr


def test_durations_with_units_reach_the_run(
    cli: Cli, kube: list[str], results: Path, fake_cluster: FakeCluster
) -> None:
    r = cli("scan", "apps/web/app", *kube, "--token-ttl", "1h", "--timeout", "90s", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    [token_request] = [
        q for q in fake_cluster.request_log if q.subresource == "token" and q.method == "POST"
    ]
    assert token_request.body["spec"]["expirationSeconds"] == 3600


def _two_runs(results: Path, newly_failing: bool) -> tuple[str, str]:
    a, b = "20250101T000000Z-aaaaaa", "20250102T000000Z-bbbbbb"
    failed_b = {"high": ["C-1", "C-2"]} if newly_failing else {"high": ["C-1"]}
    make_run(results, a, [summary("prod", "apps", "web", "app", failed={"high": ["C-1"]})], {})
    make_run(results, b, [summary("prod", "apps", "web", "app", failed=failed_b)], {})
    return a, b


@pytest.mark.parametrize("newly", [True, False])
def test_diff_exit_code_is_1_when_something_newly_fails(
    cli: Cli, results: Path, newly: bool
) -> None:
    a, _b = _two_runs(results, newly)
    plain = cli("diff", a, "latest", "--results-dir", str(results))
    assert plain.returncode == 0, plain.stderr
    gated = cli("diff", a, "latest", "--results-dir", str(results), "--exit-code")
    assert gated.returncode == (1 if newly else 0), gated.stderr
    assert gated.stdout == plain.stdout


def test_diff_exit_code_counts_a_target_that_now_errors(cli: Cli, results: Path) -> None:
    a, b = "20250101T000000Z-aaaaaa", "20250102T000000Z-bbbbbb"
    make_run(results, a, [summary("prod", "apps", "web", "app")], {})
    make_run(results, b, [summary("prod", "apps", "web", "app", status="error")], {})
    r = cli("diff", a, b, "--results-dir", str(results), "--exit-code")
    assert r.returncode == 1, r.stderr


def test_runs_lists_every_run_newest_first_and_latest_names_the_newest(
    cli: Cli, kube: list[str], results: Path, fake_cluster: FakeCluster, auditor_plan: Any
) -> None:
    auditor_plan({"*": {"exit": 3, "stderr": "boom"}})  # the second run errors: exit 3
    ok = cli("scan", "apps/web/app", *kube, "--results-dir", str(results))
    assert ok.returncode == 3, ok.stderr[-2000:]
    first = ok.stdout.splitlines()[0]
    auditor_plan({})
    good = json.loads(cli("scan", "apps/web/app", *kube, "--output", str(results), "--json").stdout)
    (results / "20240101T000000Z-cccccc").mkdir(mode=0o700)  # a run that never finished

    listed = cli("runs", "--results-dir", str(results), "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["run_id"] for r in rows] == sorted(
        [first, good["run_id"], "20240101T000000Z-cccccc"]
    )[::-1]
    newest = rows[0]
    assert newest == {
        "run_id": good["run_id"],
        "source": "scan",
        "created_at": good["created_at"],
        "state": "finished",
        "targets": 1,
        "compliance": good["compliance"],
        "exit_code": 0,
    }
    assert rows[1]["exit_code"] == 3
    assert rows[2]["state"] == "unfinished"
    assert rows[2]["created_at"] == "2024-01-01T00:00:00Z"

    table = cli("runs", "--results-dir", str(results)).stdout.splitlines()
    assert table[0].split() == [
        "RUN", "ID", "SOURCE", "CREATED", "STATE", "TARGETS", "COMPLIANCE", "EXIT"
    ]  # fmt: skip
    assert table[1].split()[0] == good["run_id"]
    assert table[1].split()[3:] == ["finished", "1", f"{good['compliance']}%", "0"]
    assert table[3].split()[3:] == ["unfinished", "-", "-", "-"]

    # `latest` wherever a RUN_ID is taken: the newest run directory.
    rep = cli("report", "latest", "--results-dir", str(results))
    assert rep.returncode == 0
    assert json.loads(rep.stdout)["run_id"] == good["run_id"]
    st = cli("status", "latest", "--results-dir", str(results), "--json")
    assert json.loads(st.stdout)["run_id"] == good["run_id"]
    empty = cli("report", "latest", "--results-dir", str(results / "none"))
    assert empty.returncode == 2
    assert "no runs in" in empty.stderr


def test_status_watch_follows_a_running_local_run_to_its_end(
    cli: Cli,
    overrides: dict[str, str],
    kube: list[str],
    results: Path,
    fake_cluster: FakeCluster,
    auditor_plan: Any,
) -> None:
    auditor_plan({"*": {"sleep": 3}})
    runner = subprocess.Popen(
        [*CLI, "submit", "-n", "apps", *kube, "--local", "--results-dir", str(results)],
        env=environment(overrides),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: any(results.glob("*/")), 30, "the run directory")
        [run_dir] = list(results.iterdir())
        assert not (run_dir / "run.json").exists()
        started = time.monotonic()
        w = cli("status", "latest", "--watch", "--interval", "1s", "--results-dir", str(results))
        assert runner.wait(60) == 0
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    assert w.returncode == 0, w.stderr[-2000:]
    assert time.monotonic() - started >= 1  # it waited for the run, polling
    run = json.loads((run_dir / "run.json").read_text())
    assert f"results: {run['run_id']}  exit code: 0" in w.stdout
    once = cli("status", run_dir.name, "--results-dir", str(results))
    assert once.stdout == w.stdout  # --watch ends with what status shows of a finished run


@pytest.mark.parametrize(
    ("shell", "marker"),
    [("bash", "complete -o nosort -F"), ("zsh", "#compdef scanfleet"), ("fish", "complete ")],
)
def test_completion_prints_clicks_script(cli: Cli, shell: str, marker: str) -> None:
    r = cli("completion", shell)
    assert r.returncode == 0, r.stderr
    assert "_SCANFLEET_COMPLETE" in r.stdout
    assert marker in r.stdout


def test_the_completion_script_completes_commands_and_options(
    overrides: dict[str, str],
) -> None:
    def complete(words: str) -> list[str]:
        e = {
            **environment(overrides),
            "_SCANFLEET_COMPLETE": "bash_complete",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)),
        }
        out = subprocess.run(
            [*CLI], env=e, capture_output=True, text=True, timeout=60, check=False
        ).stdout
        return [line.split(",", 1)[1] for line in out.splitlines()]

    assert complete("scanfleet ru") == ["runs"]
    assert "--all-namespaces" in complete("scanfleet submit --all")
