"""The scanfleet side of the launcher: one launcher per process, a Popen-like handle per auditor.

`spawn` sends a request (argv, environment, working directory, sandbox policy, and the
auditor's stdin/stdout/stderr as SCM_RIGHTS) to this process's launcher
(`scanfleet/sandbox/forkserver.py`), started lazily with `python -I -S` the first time, and returns
an `AuditorProcess` once the auditor has exec'd: its pid (also its process group, so
`os.killpg` works), `poll`, `wait(timeout)`, `returncode` and the stderr pipe. One reader
thread demultiplexes the launcher's replies by request id; writes take one lock, so any
number of scanning threads can spawn at once.

What it must never do:
- hang a scan when the launcher dies: every request in flight fails (`LauncherLost`), every
  running handle completes with `lost` set and returncode -SIGKILL (the auditor dies with
  its launcher), and the next `spawn` starts a new launcher;
- share a launcher across a fork: a forked child (Celery's pool) drops the inherited
  socket without touching it and starts its own launcher when it first needs one;
- leave its launcher behind: at exit the socket is shut down (the launcher kills what it
  started and exits) and the launcher is reaped, so its CPU is accounted to this process.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

SERVER = Path(__file__).resolve().with_name("forkserver.py")
_RECV_BYTES = 64 * 1024
_START_TIMEOUT_S = 30.0
_EXIT_WAIT_S = 10.0
_NOT_SENT = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF})


class LauncherLost(Exception):
    """The launcher exited before it could answer (the request may not have run)."""


class SpawnFailed(Exception):
    """The launcher's child could not be confined (`kind` "sandbox") or exec'd ("exec")."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class AuditorProcess:
    """A started auditor: the subset of `subprocess.Popen` that `run_auditor` uses."""

    def __init__(self, stderr: IO[bytes] | None) -> None:
        self.pid = 0
        self.stderr = stderr
        self.returncode: int | None = None
        self.lost = False  # the launcher died: the auditor was killed with it
        self._started = threading.Event()
        self._done = threading.Event()
        self._reply: dict[str, Any] = {}
        self._abandoned = False
        self._attempt = 0  # the id of the request that counts (a retry makes a new one)
        self._lock = threading.Lock()

    def _retry(self, msg_id: int) -> None:
        """A new request for this handle: whatever answers an earlier one is ignored."""
        with self._lock:
            self._attempt = msg_id
            self._reply = {}
            self._started.clear()

    def _answer(self, msg_id: int, reply: dict[str, Any]) -> None:
        """The launcher's answer to request `msg_id`: started, failed, info, or lost."""
        with self._lock:
            if msg_id != self._attempt:
                return
            self._reply = reply
            if reply.get("event") == "started":
                self.pid = int(reply["pid"])
                if self._abandoned:
                    _killpg(self.pid)
        self._started.set()

    def _abandon(self) -> None:
        """The requester stopped waiting: kill the auditor now, or as soon as it starts."""
        with self._lock:
            self._abandoned = True
            if self.pid:
                _killpg(self.pid)

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(f"auditor {self.pid}", timeout or 0.0)
        assert self.returncode is not None
        return self.returncode


class _Connection:
    """One launcher process and its socket; dead for good once the socket is."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(SERVER), str(theirs.fileno())],
                env={},
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        self.dead = False
        self.lock = threading.Lock()  # the pending table and `dead`
        self.send_lock = threading.Lock()
        self.pending: dict[int, AuditorProcess] = {}
        self.reader = threading.Thread(target=self._read, name="scanfleet-launcher", daemon=True)
        self.reader.start()

    def send(
        self, msg_id: int, handle: AuditorProcess, msg: dict[str, Any], fds: Sequence[int]
    ) -> bool:
        """Register `handle` and send; False if the launcher is gone (nothing was sent)."""
        with self.lock:
            if self.dead:
                return False
            self.pending[msg_id] = handle
        data = json.dumps(msg).encode()
        try:
            with self.send_lock:
                socket.send_fds(self.sock, [data], list(fds))
        except OSError as e:
            with self.lock:
                self.pending.pop(msg_id, None)
            if e.errno in _NOT_SENT:
                self._lost()
                return False
            raise
        return True

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(_RECV_BYTES)
            except OSError:
                data = b""
            if not data:
                self._lost()
                self.sock.close()
                return
            self._dispatch(json.loads(data))

    def _dispatch(self, msg: dict[str, Any]) -> None:
        msg_id = msg.get("id", -1)
        with self.lock:
            handle = self.pending.get(msg_id)
            if handle is None:
                return
            if msg.get("event") == "exit":
                handle.returncode = os.waitstatus_to_exitcode(int(msg["status"]))
                del self.pending[msg_id]
                handle._done.set()
                return
            if msg.get("event") != "started":  # "failed", "info": answered and over
                del self.pending[msg_id]
        handle._answer(msg_id, msg)

    def _lost(self) -> None:
        """The launcher is gone: fail what waits, complete what ran, reap it."""
        with self.lock:
            self.dead = True
            pending, self.pending = self.pending, {}
        code = None
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = self.proc.wait(_EXIT_WAIT_S)
        for msg_id, handle in pending.items():
            if handle._reply.get("event") == "started":
                handle.lost = True
                handle.returncode = -signal.SIGKILL
                handle._done.set()
            else:
                handle._answer(msg_id, {"event": "lost", "code": code})

    def close(self) -> None:
        """Our exit: EOF for the launcher (it kills its groups and exits); reap it."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(_EXIT_WAIT_S)
        self.reader.join(_EXIT_WAIT_S)
        self.sock.close()

    def forget(self) -> None:
        """In a forked child: drop the inherited socket without disturbing the parent's."""
        fd = self.sock.detach()
        with contextlib.suppress(OSError):
            os.close(fd)


def _killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class Launcher:
    """This process's launcher, (re)started on demand."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conn: _Connection | None = None
        self._ids = itertools.count(1)
        self._devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self.owner = os.getpid()

    def _connection(self) -> _Connection:
        with self._lock:
            if self._conn is None or self._conn.dead:
                self._conn = _Connection()
            return self._conn

    @property
    def pid(self) -> int | None:
        """The launcher's pid, if one is running."""
        conn = self._conn
        return conn.proc.pid if conn is not None and not conn.dead else None

    def spawn(
        self, argv: Sequence[str], env: Mapping[str, str], cwd: str, policy: Mapping[str, object]
    ) -> AuditorProcess:
        """Start `argv` confined by `policy`; return once it has exec'd.

        stdin and stdout are /dev/null, stderr a pipe (`.stderr`). Raises SpawnFailed,
        LauncherLost or whatever interrupts the wait (the auditor is then killed).
        """
        rfd, wfd = os.pipe()
        handle = AuditorProcess(os.fdopen(rfd, "rb", buffering=0))
        try:
            self._request(
                handle,
                {
                    "op": "spawn",
                    "argv": list(argv),
                    "env": dict(env),
                    "cwd": cwd,
                    "policy": dict(policy),
                },
                (self._devnull, self._devnull, wfd),
            )
        except BaseException:
            assert handle.stderr is not None
            handle.stderr.close()
            raise
        finally:
            os.close(wfd)
        return self._await_start(handle)

    def info(self) -> dict[str, Any]:
        """What the launcher says about itself (pid, whether it is dumpable)."""
        handle = AuditorProcess(None)
        self._request(handle, {"op": "info"}, ())
        if not handle._started.wait(_START_TIMEOUT_S) or handle._reply.get("event") != "info":
            raise LauncherLost("the launcher did not answer")
        return handle._reply

    def _request(self, handle: AuditorProcess, msg: dict[str, Any], fds: Sequence[int]) -> None:
        for _ in range(2):  # a launcher found dead at send time is restarted once
            msg["id"] = next(self._ids)
            handle._retry(msg["id"])
            if self._connection().send(msg["id"], handle, msg, fds):
                return
        raise LauncherLost("the auditor launcher exited as it was sent a request")

    def _await_start(self, handle: AuditorProcess) -> AuditorProcess:
        try:
            if not handle._started.wait(_START_TIMEOUT_S):
                raise LauncherLost(
                    f"the launcher did not start the auditor in {_START_TIMEOUT_S:g} s"
                )
        except BaseException:
            handle._abandon()
            raise
        reply = handle._reply
        if reply.get("event") == "started":
            return handle
        assert handle.stderr is not None
        handle.stderr.close()
        if reply.get("event") == "lost":
            raise LauncherLost(
                f"the auditor launcher exited (code {reply.get('code')}) before the auditor started"
            )
        raise SpawnFailed(str(reply.get("kind") or "sandbox"), str(reply.get("detail", "")))

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class _ThisProcess:
    """The launcher client of this process (a forked child gets a new one)."""

    launcher: Launcher | None = None
    lock = threading.Lock()


def get() -> Launcher:
    """This process's launcher client (created on first use, after a fork anew)."""
    with _ThisProcess.lock:
        if _ThisProcess.launcher is None:
            _ThisProcess.launcher = Launcher()
        return _ThisProcess.launcher


def _after_fork_in_child() -> None:
    _ThisProcess.lock = threading.Lock()
    inherited, _ThisProcess.launcher = _ThisProcess.launcher, None
    if inherited is not None:
        if inherited._conn is not None:
            inherited._conn.forget()
        with contextlib.suppress(OSError):
            os.close(inherited._devnull)


def _close_at_exit() -> None:
    launcher = _ThisProcess.launcher
    if launcher is not None and launcher.owner == os.getpid():
        launcher.close()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_at_exit)
