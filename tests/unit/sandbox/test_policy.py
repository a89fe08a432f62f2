"""The auditor sandbox: a hostile auditor reaches nothing but its own credential.

`scanfleet scan` runs scanfleet/testing/standin/hostile-auditor against the fake cluster. With the
sandbox on, every probe (admin kubeconfig, the kubernetes client's temp cert/key files,
~/.kube/config, the service account token, another scan's directory, another run's results,
/proc/<parent>/environ, a Redis this test starts, a port that is not the API server's,
binding a port, MPTCP connect and bind, raw/netlink/packet sockets, an abstract unix
socket outside the sandbox, signalling its parent, opening for writing its kubeconfig, its
profile, its own installation and root-owned files in /etc and /usr) fails and the scan
still completes; a file written in its work dir succeeds; with SCANFLEET_SANDBOX=off the
same probes succeed, so these tests fail if the sandbox stops being applied.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from scanfleet.cli import main_group
from scanfleet.cli import scan as _register_scan  # noqa: F401
from scanfleet.core.errors import BadInput, SandboxUnavailable
from scanfleet.core.settings import SandboxSettings
from scanfleet.core.targets import Target
from scanfleet.sandbox import policy, reaper
from scanfleet.scan import auditor
from scanfleet.scan.auditor import run_auditor
from scanfleet.store import files
from scanfleet.testing.fakekube import FakeCluster
from tests.support.fixtures_auditor import HOST_FROM_ENV, STANDIN, PlanWriter, this_host
from tests.support.fixtures_fleet import RedisServer
from tests.support.tools import alive, wait_until

HOSTILE = STANDIN.with_name("hostile-auditor")
READ_PROBES = (
    "admin_kubeconfig",
    "home_kube",
    "sa_token",
    "other_scan",
    "other_results",
    "worker_environ",
    "launcher_environ",
    "home_inspec",
)
# Opened for appending (nothing is written): the read rules must not grant write.
WRITE_PROBES = (
    "write_kubeconfig",
    "write_profile",
    "write_installation",
    "write_etc",
    "write_usr",
)
SOCKET_PROBES = ("mptcp_connect", "mptcp_bind", "raw_socket", "netlink_socket", "packet_socket")
NEEDS_ROOT = ("raw_socket", "packet_socket")  # unconfined, they need CAP_NET_RAW
ROOT_OWNED_USR = ("/usr/lib/os-release", "/usr/share/common-licenses/GPL-3", "/usr/bin/env")


def mptcp_enabled() -> bool:
    """Whether this kernel creates MPTCP sockets (without the sandbox)."""
    try:
        return Path("/proc/sys/net/mptcp/enabled").read_text().strip() == "1"
    except OSError:
        return False


def _root_owned_usr_file() -> str:
    for p in ROOT_OWNED_USR:
        if os.path.isfile(p) and os.stat(p).st_uid == 0:
            return p
    pytest.fail(f"none of {ROOT_OWNED_USR} is a root-owned file here")


@pytest.fixture
def abstract_listener() -> Iterator[str]:
    """An abstract unix socket listening outside the sandbox; yields its name."""
    name = f"scanfleet-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind("\0" + name)
        s.listen(8)
        yield name


@pytest.fixture
def other_scan_dir() -> Iterator[Path]:
    """Another scan's private directory, as the identity step lays it out."""
    d = Path(tempfile.mkdtemp(prefix="scanfleet-"))
    (d / "kubeconfig").write_text("token: another-scans-token\n")
    yield d
    for p in sorted(d.rglob("*"), reverse=True):
        p.unlink() if not p.is_dir() else p.rmdir()
    d.rmdir()


@pytest.fixture
def hostile(
    fake_cluster: FakeCluster,
    standin_auditor: str,
    standin_io: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    listener: int,
    other_scan_dir: Path,
    redis_server: RedisServer,
    abstract_listener: str,
) -> Callable[..., tuple[Any, dict[str, Any]]]:
    """Run `scanfleet scan apps/web/app` with the hostile auditor; (outcome, probes)."""
    from kubernetes.client import Configuration
    from kubernetes.config import kube_config

    admin = fake_cluster.write_kubeconfig(tmp_path / "kube" / "config", auth="client-cert")
    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    (home / ".kube" / "config").write_text("token: the-operators-own-token\n")
    # Automate / compliance tokens: never granted without an explicit INSPEC_CONFIG_DIR.
    (home / ".inspec").mkdir()
    (home / ".inspec" / "config.json").write_text('{"token": "an-automate-token"}\n')
    secrets = tmp_path / "run-secrets"
    (secrets / "kubernetes.io" / "serviceaccount").mkdir(parents=True)
    (secrets / "kubernetes.io" / "serviceaccount" / "token").write_text("worker-sa-token\n")
    other_run = tmp_path / "results" / "20200101T000000Z-000000"
    other_run.mkdir(parents=True)
    (other_run / "run.json").write_text('{"run_id": "20200101T000000Z-000000"}\n')
    # The admin client writes its CA, certificate and key to temp files; load it once here
    # so the scan's client reuses them and their names are known.
    kube_config.load_kube_config(config_file=str(admin), client_configuration=Configuration())
    temp_files = sorted(kube_config._temp_files.values())
    assert len(temp_files) >= 2, "the client-cert kubeconfig should leave cert and key files"
    profile = tmp_path / "profile"
    profile.mkdir()
    (profile / "inspec.yml").write_text("name: p\n")
    spec = {
        "read": {
            "admin_kubeconfig": str(admin),
            "home_kube": str(home / ".kube" / "config"),
            "home_inspec": str(home / ".inspec" / "config.json"),
            "sa_token": str(secrets / "kubernetes.io" / "serviceaccount" / "token"),
            "other_scan": str(other_scan_dir / "kubeconfig"),
            "other_results": str(other_run / "run.json"),
            # The scan runs in this process (the worker); the auditor's parent is its
            # supervisor (a fork of the launcher).
            "worker_environ": f"/proc/{os.getpid()}/environ",
            "launcher_environ": "/proc/{ppid}/environ",
            **{f"client_temp_{i}": p for i, p in enumerate(temp_files)},
        },
        "connect": {
            "redis": ["127.0.0.1", redis_server.port],
            "other_port": ["127.0.0.1", listener],
        },
        "bind": True,
        "signal_parent": True,
        "signal": {"signal_worker": os.getpid()},
        "self_status": True,
        "write": {
            "write_kubeconfig": "{kubeconfig}",
            "write_profile": "{profile}/inspec.yml",
            "write_installation": "{self}",
            "write_etc": "/etc/passwd",
            "write_usr": _root_owned_usr_file(),
        },
        "create": {"create_in_workdir": "{home}/written-by-the-auditor"},
        "mptcp_connect": ["127.0.0.1", redis_server.port],
        "mptcp_bind": True,
        "socket": {
            "raw_socket": [socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP],
            "netlink_socket": [socket.AF_NETLINK, socket.SOCK_RAW, 0],
            "packet_socket": [socket.AF_PACKET, socket.SOCK_RAW, 0],
        },
        "abstract_connect": {"abstract_unix": abstract_listener},
    }
    probes = standin_io / "probes.json"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("SCANFLEET_SANDBOX_PROTECT", str(secrets))
    monkeypatch.setenv("SCANFLEET_AUDITOR", str(HOSTILE))
    monkeypatch.setenv("SCANFLEET_STANDIN_HOSTILE", json.dumps(spec))
    monkeypatch.setenv("SCANFLEET_STANDIN_PROBES", str(probes))
    monkeypatch.setenv("SCANFLEET_STANDIN_CHECK_ACCESS", "1")
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("INSPEC_CONFIG_DIR", raising=False)

    def run(*extra: str, **more_probes: Any) -> tuple[Any, dict[str, Any]]:
        probes.unlink(missing_ok=True)
        monkeypatch.setenv("SCANFLEET_STANDIN_HOSTILE", json.dumps({**spec, **more_probes}))
        argv = [
            "scan",
            "apps/web/app",
            "--profile",
            str(profile),
            "--kubeconfig",
            str(admin),
            "--output",
            str(tmp_path / "results"),
            *extra,
        ]
        outcome = CliRunner().invoke(main_group, argv, catch_exceptions=False)
        return outcome, json.loads(probes.read_text())

    return run


def test_every_probe_fails_and_the_scan_completes(
    hostile: Callable[..., tuple[Any, dict[str, Any]]], fake_cluster: FakeCluster
) -> None:
    outcome, probes = hostile()
    assert outcome.exit_code == 0, outcome.stderr
    attempted = {k for k in probes if k != "self_status"}
    assert {
        *READ_PROBES,
        *WRITE_PROBES,
        *SOCKET_PROBES,
        "client_temp_0",
        "client_temp_1",
        "redis",
        "other_port",
        "bind",
        "signal_parent",
        "signal_worker",
        "abstract_unix",
    } <= attempted
    # Its own work dir it may write (or the write probes above prove nothing).
    assert probes.pop("create_in_workdir") == "ok"
    succeeded = {k: v for k, v in probes.items() if k != "self_status" and v == "ok"}
    assert succeeded == {}, f"the sandboxed auditor reached: {sorted(succeeded)}"
    for name in SOCKET_PROBES:  # refused by the seccomp socket allow-list, not by chance
        assert probes[name] == "denied: PermissionError Permission denied", (name, probes[name])
    assert str(probes["self_status"]).startswith("denied"), "/proc is not readable by default"
    # The stand-in reached the API server with the scan's identity (kubectl get pod).
    assert fake_cluster.scanfleet_objects() == []


def test_the_same_probes_succeed_with_the_sandbox_off(
    hostile: Callable[..., tuple[Any, dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCANFLEET_SANDBOX", "off")
    outcome, probes = hostile()
    assert outcome.exit_code == 0, outcome.stderr
    expected_ok = {k for k in probes if k not in ("self_status", "launcher_environ")}
    assert {*WRITE_PROBES, *SOCKET_PROBES, "abstract_unix", "redis"} <= expected_ok
    # The supervisor, a fork of the launcher, has an empty environment: nothing to read
    # there, sandbox or not.
    assert probes["launcher_environ"] == "denied: empty"
    if os.geteuid() != 0:
        expected_ok -= set(NEEDS_ROOT)
    if not mptcp_enabled():
        expected_ok -= {"mptcp_connect", "mptcp_bind"}
    failed = {k: probes[k] for k in expected_ok if probes[k] != "ok"}
    assert failed == {}, "without the sandbox the probes must work, or the test proves nothing"
    warnings = [json.loads(line) for line in outcome.stderr.splitlines() if '"sandbox.off"' in line]
    assert [w["event"] for w in warnings] == ["sandbox.off"], outcome.stderr[-2000:]


def test_with_proc_readable_the_parent_environ_stays_closed(
    hostile: Callable[..., tuple[Any, dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Landlock's ptrace scoping and the dropped capabilities hold on their own."""
    monkeypatch.setenv(
        "SCANFLEET_SANDBOX_ALLOW_READ",
        os.environ["SCANFLEET_SANDBOX_ALLOW_READ"] + os.pathsep + "/proc",
    )
    outcome, probes = hostile()
    assert outcome.exit_code == 0, outcome.stderr
    for name in ("worker_environ", "launcher_environ"):
        assert probes[name].startswith("denied"), f"{name}: {probes[name]}"
    status = probes["self_status"]
    assert isinstance(status, dict), status
    for caps in ("CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"):
        assert int(status[caps], 16) == 0, f"{caps}={status[caps]}"
    assert status["NoNewPrivs"] == "1"


def test_an_allow_rule_that_exposes_a_protected_path_is_refused(
    hostile: Callable[..., tuple[Any, dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv(
        "SCANFLEET_SANDBOX_ALLOW_READ",
        os.environ["SCANFLEET_SANDBOX_ALLOW_READ"] + os.pathsep + str(tmp_path),
    )
    with pytest.raises(FileNotFoundError):
        hostile()  # the auditor never ran: no probes file
    runs = [p for p in (tmp_path / "results").iterdir() if not p.name.startswith("2020")]
    run_dir = max(runs)
    [summary] = [files.read_json(p) for p in files.summary_files(run_dir)]
    assert summary["error"]["kind"] == "sandbox_unavailable"
    assert "would expose the protected path" in summary["error"]["message"]


# --- nothing of a scan outlives it -----------------------------------------------------------

SCAN_END_S = 2.0  # every process of a scan is gone this soon after it ends


def orphans(directory: Path) -> list[int]:
    """The pids the hostile auditor's double-forked `setsid` sleepers wrote."""
    return [int(p.read_text()) for p in sorted(directory.glob("orphan-*.pid")) if p.read_text()]


@contextlib.contextmanager
def killing_orphans_after(directory: Path) -> Iterator[None]:
    """Whatever the test finds, leave no sleeper behind."""
    try:
        yield
    finally:
        for pid in orphans(directory):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def assert_gone_soon(pids: list[int]) -> None:
    assert pids, "the auditor started no sleeper: the test proves nothing"
    wait_until(
        lambda: not any(alive(p) for p in pids),
        timeout=SCAN_END_S,
        what=f"the scan's double-forked setsid sleepers {pids} to be gone",
    )


@pytest.mark.parametrize("mode", ["on", "off"])
def test_a_double_forked_setsid_sleeper_does_not_outlive_scan(
    hostile: Callable[..., tuple[Any, dict[str, Any]]],
    standin_io: Path,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
) -> None:
    monkeypatch.setenv("SCANFLEET_SANDBOX", mode)
    with killing_orphans_after(standin_io):
        outcome, probes = hostile(orphan=str(standin_io / "orphan-{pid}.pid"))
        assert outcome.exit_code == 0, outcome.stderr
        assert probes["orphan"] == "ok"
        assert_gone_soon(orphans(standin_io))


def _hostile_run_auditor(standin_io: Path, private: Path, tmp_path: Path, timeout: float) -> str:
    """A worker process running one audit with the hostile auditor, whose stand-in then
    sleeps; its source for `python -c`."""
    return (
        "import sys; from pathlib import Path;"
        "from scanfleet.scan.auditor import Host, run_auditor;"
        "from scanfleet.core.settings import Settings;"
        "from scanfleet.core.targets import Target;"
        f"run_auditor({str(HOSTILE)!r}, 'p', Target('c','ns','pod','app'),"
        f" Path({str(tmp_path / 'r.json')!r}), Path({str(private)!r}), timeout={timeout},"
        f" host={HOST_FROM_ENV})"
    )


@pytest.mark.parametrize("end", ["timeout", "worker_killed", "auditor_killed"])
def test_the_sleeper_is_gone_however_the_audit_ends(
    standin_auditor: str,
    auditor_plan: PlanWriter,
    standin_io: Path,
    private: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    end: str,
) -> None:
    pid_file = standin_io / "pids.json"
    auditor_plan({"*": {"sleep": 120, "pid_file": str(pid_file)}})
    monkeypatch.setenv(
        "SCANFLEET_STANDIN_HOSTILE", json.dumps({"orphan": str(standin_io / "orphan-{pid}.pid")})
    )
    timeout = 3 if end == "timeout" else 300
    code = _hostile_run_auditor(standin_io, private, tmp_path, timeout)
    with killing_orphans_after(standin_io):
        worker = subprocess.Popen([sys.executable, "-c", code], env=os.environ.copy())
        try:
            wait_until(pid_file.exists, what="the auditor to start")
            sleepers = orphans(standin_io)
            assert sleepers
            assert all(alive(p) for p in sleepers)
            if end == "worker_killed":
                worker.kill()  # SIGKILL: no clean-up code runs in the worker
            elif end == "auditor_killed":
                os.kill(json.loads(pid_file.read_text())["pid"], signal.SIGKILL)
            worker.wait(60)
            assert_gone_soon(sleepers)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


# --- run_auditor: fail closed, helper errors, dies with its worker --------------------------


@pytest.fixture
def private(make_cluster: Callable[..., FakeCluster], tmp_path: Path) -> Path:
    """A scan's private directory and kubeconfig as scanfleet lays them out (0600 in 0700),
    for a fake cluster holding the target's pod: the stand-in authenticates and execs with
    it, as the real transport does."""
    cluster = make_cluster()
    cluster.add_namespace("ns")
    cluster.add_pod("ns", "pod", containers=["app"])
    d = tmp_path / "scanfleet-private"
    d.mkdir(mode=0o700)
    d.chmod(0o700)
    return cluster.write_kubeconfig(d / "kubeconfig", context="c", namespace="ns")


def _run(standin: str, kubeconfig: Path, tmp_path: Path, **kw: Any) -> Any:
    return run_auditor(
        standin,
        "p",
        Target("c", "ns", "pod", "app"),
        tmp_path / "out" / "r.report.json",
        kubeconfig,
        timeout=60,
        **{"host": this_host(), **kw},
    )


def test_without_landlock_nothing_runs_unless_opted_out(
    standin_auditor: str,
    auditor_log: Any,
    private: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(policy, "abi_version", lambda: 0)
    with pytest.raises(SandboxUnavailable, match="Landlock") as info:
        _run(standin_auditor, private, tmp_path)
    assert info.value.kind == "sandbox_unavailable"
    assert auditor_log() == []
    monkeypatch.setenv("SCANFLEET_SANDBOX", "off")
    assert _run(standin_auditor, private, tmp_path).exit_code == 100
    assert len(auditor_log()) == 1
    assert policy.mode_label(SandboxSettings.from_env(os.environ)) == "off"


def test_without_seccomp_nothing_runs_unless_opted_out(
    standin_auditor: str,
    auditor_log: Any,
    private: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(policy, "seccomp_available", lambda: False)
    with pytest.raises(SandboxUnavailable, match="seccomp") as info:
        _run(standin_auditor, private, tmp_path)
    assert info.value.kind == "sandbox_unavailable"
    assert auditor_log() == []
    monkeypatch.setenv("SCANFLEET_SANDBOX", "off")
    assert _run(standin_auditor, private, tmp_path).exit_code == 100


_SOCKET_MATRIX = {
    "unix_stream": (socket.AF_UNIX, socket.SOCK_STREAM, 0),
    "unix_dgram": (socket.AF_UNIX, socket.SOCK_DGRAM, 0),
    "tcp": (socket.AF_INET, socket.SOCK_STREAM, 0),
    "tcp_explicit": (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP),
    "tcp6_nonblock_cloexec": (
        socket.AF_INET6,
        socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
        0,
    ),
    "udp": (socket.AF_INET, socket.SOCK_DGRAM, 0),
    "udp6_explicit": (socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_UDP),
    "mptcp": (socket.AF_INET, socket.SOCK_STREAM, 262),
    "mptcp6": (socket.AF_INET6, socket.SOCK_STREAM | socket.SOCK_CLOEXEC, 262),
    "sctp": (socket.AF_INET, socket.SOCK_STREAM, 132),
    "sctp_seqpacket": (socket.AF_INET, socket.SOCK_SEQPACKET, 132),
    "icmp_dgram": (socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP),
    "udplite": (socket.AF_INET, socket.SOCK_DGRAM, 136),
    "raw": (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
    "netlink": (socket.AF_NETLINK, socket.SOCK_RAW, 0),
    "packet": (socket.AF_PACKET, socket.SOCK_RAW, 0),
    "vsock": (40, socket.SOCK_STREAM, 0),
}
_ALLOWED = {"unix_stream", "unix_dgram", "tcp", "tcp_explicit", "tcp6_nonblock_cloexec", "udp"}
_ALLOWED |= {"udp6_explicit"}


def test_the_socket_filter_allows_unix_tcp_and_udp_only() -> None:
    """In a child that installed the filter: each socket() of the matrix, socketpair(),
    io_uring_setup and an x32 socket() (on x86_64)."""
    code = f"""
import ctypes, json, os, socket
from scanfleet.sandbox import confine
confine.restrict_sockets()
out = {{}}
for name, args in json.loads({json.dumps(_SOCKET_MATRIX)!r}).items():
    try:
        socket.socket(*args).close()
        out[name] = "ok"
    except OSError as e:
        out[name] = e.errno
try:
    socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    out["socketpair_unix"] = "ok"
except OSError as e:
    out["socketpair_unix"] = e.errno
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
out["io_uring_setup"] = libc.syscall(ctypes.c_long(425), ctypes.c_long(8), None) or "ok"
out["io_uring_errno"] = ctypes.get_errno()
if os.uname().machine == "x86_64":
    args = [ctypes.c_long(a) for a in (0x40000000 | 41, socket.AF_INET, socket.SOCK_STREAM, 0)]
    out["x32_socket"] = libc.syscall(*args)
    out["x32_errno"] = ctypes.get_errno()
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for name in _SOCKET_MATRIX:
        if name in _ALLOWED:
            assert out[name] == "ok", (name, out[name])
        else:
            assert out[name] == 13, f"{name}: {out[name]} (want EACCES from the filter)"
    assert out["socketpair_unix"] == "ok"
    assert (out["io_uring_setup"], out["io_uring_errno"]) == (-1, 13)
    if "x32_socket" in out:
        assert (out["x32_socket"], out["x32_errno"]) == (-1, 13)


def test_the_socket_filter_refuses_an_unknown_architecture() -> None:
    from scanfleet.sandbox import confine

    assert confine.socket_filter("x86_64") != confine.socket_filter("aarch64")
    with pytest.raises(confine.SandboxError, match="riscv64"):
        confine.socket_filter("riscv64")


def test_a_child_that_cannot_confine_runs_nothing(
    standin_auditor: str,
    auditor_log: Any,
    private: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = policy.build_policy

    def unopenable_rule(*args: Any) -> policy.Policy:
        built = real(*args)
        # A rule the launcher's child cannot open (ENAMETOOLONG): it must give up, not skip.
        return dataclasses.replace(built, read=(*built.read, "/" + "x" * 5000))

    monkeypatch.setattr(auditor, "build_policy", unopenable_rule)
    with pytest.raises(SandboxUnavailable, match="cannot open"):
        _run(standin_auditor, private, tmp_path)
    assert auditor_log() == []


def test_the_auditor_dies_with_its_worker(
    standin_auditor: str,
    auditor_plan: PlanWriter,
    standin_io: Path,
    private: Path,
    tmp_path: Path,
) -> None:
    pid_file = standin_io / "pids.json"
    auditor_plan({"*": {"sleep": 120, "pid_file": str(pid_file)}})
    code = (
        "import sys; from pathlib import Path;"
        "from scanfleet.scan.auditor import Host, run_auditor;"
        "from scanfleet.core.settings import Settings;"
        "from scanfleet.core.targets import Target;"
        f"run_auditor({standin_auditor!r}, 'p', Target('c','ns','pod','app'),"
        f" Path({str(tmp_path / 'r.json')!r}), Path({str(private)!r}), timeout=300,"
        f" host={HOST_FROM_ENV})"
    )
    worker = subprocess.Popen([sys.executable, "-c", code], env=os.environ.copy())
    try:
        wait_until(pid_file.exists, what="the auditor to start")
        auditor = json.loads(pid_file.read_text())["pid"]
        assert alive(auditor)
        worker.kill()  # SIGKILL: no clean-up code runs in the worker
        worker.wait()
        wait_until(lambda: not alive(auditor), what="the auditor to die with its worker")
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_config_from_env() -> None:
    c = SandboxSettings.from_env(
        {"SCANFLEET_SANDBOX_ALLOW_READ": f"/a{os.pathsep}/b", "SCANFLEET_SANDBOX_ALLOW_WRITE": "/w"}
    )
    assert c.enabled
    assert c.allow_read == (Path("/a"), Path("/b"))
    assert c.allow_write == (Path("/w"),)
    assert c.protect == (Path("/var/run/secrets"), Path("/run/secrets"))
    assert not SandboxSettings.from_env({"SCANFLEET_SANDBOX": "off"}).enabled
    with pytest.raises(BadInput, match="SCANFLEET_SANDBOX"):
        SandboxSettings.from_env({"SCANFLEET_SANDBOX": "maybe"})


def test_describe_reports_what_this_kernel_enforces() -> None:
    d = policy.describe(SandboxSettings())
    abi = policy.abi_version()
    if abi < 1:
        assert d["mode"] == "unavailable"
        return
    assert d["mode"] == f"landlock-abi-{abi}"
    assert d["filesystem"] is True
    assert d["network_tcp"] is (abi >= 4)
    assert d["sockets_tcp_udp_unix_only"] is True
    assert d["scope_signal"] is (abi >= 6)
    assert "/usr" in d["system_read"]
    assert policy.describe(SandboxSettings(enabled=False))["mode"] == "off"


def test_sandbox_command_reports_and_fails_when_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from scanfleet.cli import sandbox as _register_sandbox  # noqa: F401

    monkeypatch.delenv("SCANFLEET_SANDBOX", raising=False)
    r = CliRunner().invoke(main_group, ["sandbox", "--json"])
    abi = policy.abi_version()
    assert r.exit_code == (0 if abi >= 1 else 3), r.output
    assert json.loads(r.stdout)["landlock_abi"] == abi
    monkeypatch.setattr(policy, "abi_version", lambda: 0)
    r = CliRunner().invoke(main_group, ["sandbox"])
    assert r.exit_code == 3
    assert "unavailable" in r.stdout
    monkeypatch.setenv("SCANFLEET_SANDBOX", "off")
    assert CliRunner().invoke(main_group, ["sandbox"]).exit_code == 0


def test_partial_abis_name_what_is_not_enforced() -> None:
    assert policy.gaps(7) == []
    assert len(policy.gaps(5)) == 1
    assert "network" in policy.gaps(3)[0]


def test_harden_process_makes_the_process_non_dumpable() -> None:
    code = (
        "import ctypes; from scanfleet.sandbox.policy import harden_process;"
        "libc = ctypes.CDLL(None); print(libc.prctl(3, 0, 0, 0, 0));"
        "harden_process(); print(libc.prctl(3, 0, 0, 0, 0))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["1", "0"]


# --- stale directories and orphaned auditors ------------------------------------------------


def test_reap_stale_kills_orphans_and_removes_only_stale_dirs(tmp_path: Path) -> None:
    stale = tmp_path / "scanfleet-dead"
    stale.mkdir(mode=0o700)
    (stale / "kubeconfig").write_text("token: x\n")
    orphan = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True
    )
    try:
        reaper.record_auditor(stale, orphan.pid)
        live = tmp_path / "scanfleet-live"
        live.mkdir(mode=0o700)
        (live / reaper.RECORD).write_text("999999999 1\n")  # no such session
        minting = tmp_path / "scanfleet-minting"
        minting.mkdir(mode=0o700)
        with reaper.hold(live):
            removed = reaper.reap_stale(tmp_path)
        assert removed == [stale]
        assert not stale.exists()
        assert live.exists()
        assert minting.exists()
        orphan.wait(timeout=20)
        assert orphan.returncode == -signal.SIGKILL
        old = time.time() - 2 * reaper.MIN_AGE_S
        os.utime(minting, (old, old))
        assert reaper.reap_stale(tmp_path) == [live, minting]
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()


# --- private results ------------------------------------------------------------------------


def _modes(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root.parent)): stat.S_IMODE(p.stat().st_mode)
        for p in [root, *root.rglob("*")]
    }


@pytest.mark.parametrize(
    ("group", "dir_mode", "file_mode"), [("", 0o700, 0o600), ("1", 0o750, 0o640)]
)
def test_every_result_file_and_directory_is_private(
    fake_cluster: FakeCluster,
    admin_kubeconfig: Path,
    standin_auditor: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    group: str,
    dir_mode: int,
    file_mode: int,
) -> None:
    monkeypatch.setenv("SCANFLEET_AUDITOR", standin_auditor)
    monkeypatch.setenv("SCANFLEET_RESULTS_GROUP_READ", group)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    out = tmp_path / "results"
    old = os.umask(0o022)  # a permissive umask must not make results readable
    try:
        r = CliRunner().invoke(
            main_group,
            [
                "scan",
                "apps/web",
                "--profile",
                "p",
                "--kubeconfig",
                str(admin_kubeconfig),
                "--output",
                str(out),
            ],
        )
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.stderr
    modes = _modes(out)
    assert any(k.endswith(".report.json") for k in modes)
    assert any(k.endswith("run.json") for k in modes)
    for name, mode in modes.items():
        expected = dir_mode if (out.parent / name).is_dir() else file_mode
        assert mode == expected, f"{name}: {mode:04o} != {expected:04o}"


def test_copy_report_refuses_what_is_not_a_plain_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("admin key")
    link = tmp_path / "link.json"
    link.symlink_to(secret)
    hard = tmp_path / "hard.json"
    os.link(secret, hard)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    for bad in (link, hard, fifo):
        with pytest.raises(ValueError, match=bad.name):
            files.copy_report(bad, tmp_path / "out" / "r.json")
    assert not (tmp_path / "out" / "r.json").exists()
    good = tmp_path / "good.json"
    good.write_text("{}")
    files.copy_report(good, tmp_path / "out" / "r.json")
    assert (tmp_path / "out" / "r.json").read_text() == "{}"
    assert stat.S_IMODE((tmp_path / "out" / "r.json").stat().st_mode) == 0o600


# --- policy: what a rule may not expose -----------------------------------------------------


def _policy_with(tmp_path: Path, allow: Path) -> policy.Policy:
    secrets, results = tmp_path / "secrets", tmp_path / "results"
    for d in (secrets / "sub", results, tmp_path / "secrets-other", tmp_path / "private"):
        d.mkdir(parents=True, exist_ok=True)
    work = policy.prepare_workdir(tmp_path / "private")
    kubeconfig = tmp_path / "private" / "kubeconfig"
    kubeconfig.write_text("clusters: [{cluster: {server: 'https://127.0.0.1:6443'}}]\n")
    config = SandboxSettings(allow_read=(allow,), protect=(secrets,))
    scan = policy.Scan("/bin/sh", "p", kubeconfig, work, results)
    return policy.build_policy(
        config, scan, {"PATH": "/usr/bin:/bin"}, {"HOME": str(tmp_path / "home")}
    )


@pytest.mark.parametrize(
    ("allow", "refused"),
    [
        ("secrets", "would expose"),  # the protected directory itself
        ("secrets/sub", "would expose"),  # inside it
        (".", "would expose"),  # containing it
        ("results", "would contain"),  # the results directory
        ("secrets-other", None),  # a sibling sharing the name's prefix
        ("results/../secrets-other", None),
    ],
)
def test_a_rule_may_not_expose_a_protected_path_or_contain_results(
    tmp_path: Path,
    allow: str,
    refused: str | None,
) -> None:
    target = tmp_path / allow
    if refused is None:
        built = _policy_with(tmp_path, target)
        assert os.path.realpath(target) in built.read
        assert built.connect == (6443,)
    else:
        with pytest.raises(SandboxUnavailable, match=refused):
            _policy_with(tmp_path, target)


@pytest.mark.parametrize(
    ("allow", "refused"),
    [
        ("home", "would contain"),  # ALLOW_READ=$HOME
        ("elsewhere", "would expose the protected path"),  # where ~/.kube really lies
        ("elsewhere/kube", "would expose the protected path"),
    ],
)
def test_a_kube_dir_symlinked_out_of_home_stays_protected(
    tmp_path: Path, allow: str, refused: str
) -> None:
    real = tmp_path / "elsewhere" / "kube"
    real.mkdir(parents=True)
    (real / "config").write_text("token: the-operators-own-token\n")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / ".kube").symlink_to(real)
    with pytest.raises(SandboxUnavailable, match=refused):
        _policy_with(tmp_path, tmp_path / allow)
    # A sibling of the real directory is not protected.
    (tmp_path / "elsewhere" / "other").mkdir()
    assert (
        str(tmp_path / "elsewhere" / "other")
        in _policy_with(tmp_path, tmp_path / "elsewhere" / "other").read
    )
