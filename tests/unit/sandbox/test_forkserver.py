"""The launcher: one fork server per scanfleet process, robust to either side dying.

Covers what the sandbox tests (tests/unit/sandbox/test_policy.py, which run every scan through the
launcher) do not: concurrent spawns demultiplexed by id, exec vs sandbox failures, the
launcher's own hardening, a killed launcher (in-flight scans fail cleanly, auditors die
with it, the next spawn starts a new one), a killed worker (the launcher kills the
auditor's whole group and exits), and a fork of the worker (its own launcher).
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from scanfleet.core.errors import AuditorFailed
from scanfleet.core.targets import Target
from scanfleet.sandbox import policy, spawn
from scanfleet.scan.auditor import run_auditor
from tests.support.fixtures_auditor import PlanWriter, this_host
from tests.support.tools import alive, wait_until

SH_READ = [p for p in ("/usr", "/lib", "/lib64", "/bin") if os.path.exists(p)]
CONFINED = {"landlock": True, "read": SH_READ, "write": [], "connect": [], "drop_privileges": True}
OFF = {"landlock": False, "drop_privileges": False}
ENV = {"PATH": "/usr/bin:/bin"}


def dead(pid: int) -> bool:
    return not alive(pid)


@pytest.fixture
def launcher() -> Iterator[spawn.Launcher]:
    """A launcher client of its own (not the process-wide one the scans use)."""
    client = spawn.Launcher()
    try:
        yield client
    finally:
        client.close()


def _sh(
    client: spawn.Launcher, script: str, policy: dict[str, Any] = CONFINED, cwd: str = "/"
) -> spawn.AuditorProcess:
    return client.spawn(["sh", "-c", script], ENV, cwd, policy)


def finish(proc: spawn.AuditorProcess) -> int:
    """Wait for `proc` and close its stderr pipe; its exit code."""
    code = proc.wait(20)
    if proc.stderr is not None:
        proc.stderr.close()
    return code


def test_concurrent_spawns_each_get_their_own_exit_code_and_stderr(
    launcher: spawn.Launcher,
) -> None:
    def one(i: int) -> tuple[int, int, bytes]:
        proc = _sh(launcher, f"echo tag-{i} >&2; exit {i}")
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.stderr.close()
        return i, proc.wait(20), err

    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(one, range(48)))
    for i, code, err in outcomes:
        assert (code, err) == (i, f"tag-{i}\n".encode())


@pytest.mark.parametrize(
    ("script", "code"),
    [("exit 7", 7), ("kill -KILL $$", -signal.SIGKILL), ("kill -TERM $$", -signal.SIGTERM)],
)
def test_the_auditors_own_status_is_reported_through_its_supervisor(
    launcher: spawn.Launcher, script: str, code: int
) -> None:
    assert finish(_sh(launcher, script)) == code


def test_the_auditor_leads_its_own_session_in_the_given_directory(
    launcher: spawn.Launcher,
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    proc = _sh(launcher, f"pwd > {out}; ps -o sid= -o pgid= -p $$ >> {out}", OFF, cwd=str(tmp_path))
    assert finish(proc) == 0
    cwd, ids = out.read_text().splitlines()
    assert cwd == str(tmp_path)
    assert ids.split() == [str(proc.pid), str(proc.pid)]


def test_exec_and_sandbox_failures_are_told_apart_and_nothing_runs(
    launcher: spawn.Launcher,
    tmp_path: Path,
) -> None:
    with pytest.raises(spawn.SpawnFailed, match="No such file") as missing:
        launcher.spawn(["no-such-auditor-xyz"], ENV, "/", CONFINED)
    assert missing.value.kind == "exec"
    marker = tmp_path / "ran"
    bad = {**OFF, "landlock": True, "read": ["/" + "x" * 5000]}  # ENAMETOOLONG
    with pytest.raises(spawn.SpawnFailed, match="cannot open") as unconfined:
        _sh(launcher, f"touch {marker}", bad)
    assert unconfined.value.kind == "sandbox"
    assert not marker.exists()
    with pytest.raises(spawn.SpawnFailed, match="working directory") as nowhere:
        _sh(launcher, f"touch {marker}", OFF, cwd=str(tmp_path / "gone"))
    assert nowhere.value.kind == "sandbox"
    assert not marker.exists()
    assert finish(_sh(launcher, "exit 7")) == 7  # the launcher serves on


def test_the_launcher_is_non_dumpable_and_holds_no_environment(
    launcher: spawn.Launcher,
) -> None:
    info = launcher.info()
    assert info["dumpable"] is False
    assert info["pid"] == launcher.pid
    assert Path(f"/proc/{info['pid']}/environ").read_bytes() == b""


@pytest.mark.parametrize("policy", [CONFINED, OFF], ids=["sandbox", "off"])
def test_auditors_die_with_their_launcher(
    launcher: spawn.Launcher,
    policy: dict[str, Any],
) -> None:
    """PR_SET_PDEATHSIG, relative to the launcher, with the sandbox off too."""
    proc = _sh(launcher, "exec sleep 120", policy)
    pid = launcher.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # no clean-up runs in the launcher
    assert finish(proc) == -signal.SIGKILL
    assert proc.lost
    wait_until(lambda: not alive(proc.pid), what="the auditor to die with its launcher")


@pytest.mark.parametrize("mode", ["on", "off"])
def test_a_killed_launcher_fails_the_scan_kills_the_auditor_and_is_replaced(
    standin_auditor: str,
    auditor_plan: PlanWriter,
    standin_io: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
) -> None:
    monkeypatch.setenv("SCANFLEET_SANDBOX", mode)
    pid_file = standin_io / "pids.json"
    auditor_plan({"*": {"sleep": 120, "pid_file": str(pid_file)}})
    private = tmp_path / "scanfleet-private"
    private.mkdir(mode=0o700)
    (private / "kubeconfig").write_text("apiVersion: v1\nkind: Config\n")
    outcome: list[BaseException] = []

    def scan() -> None:
        try:
            run_auditor(
                standin_auditor,
                "p",
                Target("c", "ns", "pod", "app"),
                tmp_path / "r.json",
                private / "kubeconfig",
                timeout=300,
                host=this_host(),
            )
        except BaseException as e:  # handed to the test thread
            outcome.append(e)

    thread = threading.Thread(target=scan)
    thread.start()
    wait_until(pid_file.exists, what="the auditor to start")
    auditor = json.loads(pid_file.read_text())["pid"]
    old = spawn.get().pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    thread.join(60)
    assert not thread.is_alive(), "the scan hangs after its launcher died"
    [error] = outcome
    assert isinstance(error, AuditorFailed)
    assert "launcher exited during the audit" in str(error)
    wait_until(lambda: not alive(auditor), what="the auditor to die with its launcher")
    assert finish(_sh(spawn.get(), "exit 3")) == 3
    assert spawn.get().pid not in (None, old)


def _unread(sock: socket.socket) -> int:
    """Bytes we sent that the peer has not read yet (SIOCOUTQ)."""
    out = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    return int(struct.unpack("i", out)[0])


def test_a_request_the_launcher_never_answers_fails_cleanly(
    launcher: spawn.Launcher,
) -> None:
    assert finish(_sh(launcher, "exit 0")) == 0
    pid = launcher.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # receives, never answers
    errors: list[BaseException] = []

    def request() -> None:
        try:
            finish(_sh(launcher, "exit 0"))
        except BaseException as e:  # handed to the test thread
            errors.append(e)

    thread = threading.Thread(target=request)
    thread.start()
    conn = launcher._conn
    assert conn is not None
    wait_until(lambda: _unread(conn.sock) > 0, what="the request to be sent")
    os.kill(pid, signal.SIGKILL)
    thread.join(60)
    assert not thread.is_alive()
    [error] = errors
    assert isinstance(error, spawn.LauncherLost)
    assert (
        finish(policy.spawn(policy.Policy(landlock=False, drop_privileges=False), ["true"], ENV))
        == 0
    )


WORKER = """
import sys
from pathlib import Path
from scanfleet.scan.auditor import Host, run_auditor
from scanfleet.core.settings import Settings
from scanfleet.core.targets import Target
run_auditor(sys.argv[1], "p", Target("c", "ns", "pod", "app"), Path(sys.argv[2]),
            Path(sys.argv[3]), timeout=300, host=Host.from_settings(Settings.from_env()))
"""


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def test_killing_the_worker_kills_the_auditor_group_and_the_launcher(
    standin_auditor: str,
    auditor_plan: PlanWriter,
    standin_io: Path,
    tmp_path: Path,
) -> None:
    pid_file = standin_io / "pids.json"
    auditor_plan({"*": {"sleep": 120, "spawn_child": True, "pid_file": str(pid_file)}})
    private = tmp_path / "scanfleet-private"
    private.mkdir(mode=0o700)
    (private / "kubeconfig").write_text("apiVersion: v1\nkind: Config\n")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            WORKER,
            standin_auditor,
            str(tmp_path / "r.json"),
            str(private / "kubeconfig"),
        ],
        env=os.environ.copy(),
    )
    try:
        wait_until(pid_file.exists, what="the auditor to start")
        pids = json.loads(pid_file.read_text())
        supervisor = _parent(int(pids["pid"]))  # the scan's subreaper
        launcher = _parent(supervisor)
        assert worker.pid not in (supervisor, launcher)
        assert _parent(launcher) == worker.pid
        assert alive(launcher)
        worker.kill()  # SIGKILL: no clean-up code runs in the worker
        worker.wait()
        for pid in (int(pids["pid"]), int(pids["child_pid"]), supervisor, launcher):
            wait_until(functools.partial(dead, pid), what=f"{pid} to die with the worker")
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


FORKER = """
import os
from scanfleet.sandbox import spawn
env, policy = {"PATH": "/usr/bin:/bin"}, {"landlock": False, "drop_privileges": False}
parent = spawn.get()
assert parent.spawn(["true"], env, "/", policy).wait(20) == 0
child = os.fork()
if child == 0:
    mine = spawn.get()
    code = mine.spawn(["sh", "-c", "exit 5"], env, "/", policy).wait(20)
    print(mine.pid, code, flush=True)
    os._exit(0)
os.waitpid(child, 0)
print(parent.pid, parent.spawn(["sh", "-c", "exit 6"], env, "/", policy).wait(20), flush=True)
"""


def test_a_forked_worker_gets_its_own_launcher_and_leaves_the_parents_alone() -> None:
    out = subprocess.run(
        [sys.executable, "-c", FORKER], capture_output=True, text=True, timeout=120, check=True
    ).stdout.split("\n")
    child_launcher, child_code = out[0].split()
    parent_launcher, parent_code = out[1].split()
    assert (child_code, parent_code) == ("5", "6")
    assert child_launcher != parent_launcher


def test_an_answer_to_an_earlier_attempt_is_ignored() -> None:
    """A request re-sent to a new launcher is not failed by the old one's death notice."""
    handle = spawn.AuditorProcess(None)
    handle._retry(1)
    handle._retry(2)  # the first launcher was found dead: sent again to a new one
    handle._answer(1, {"event": "lost", "code": -9})
    assert not handle._started.is_set()
    handle._answer(2, {"event": "started", "pid": os.getpid()})
    assert handle._started.is_set()
    assert handle.pid == os.getpid()
