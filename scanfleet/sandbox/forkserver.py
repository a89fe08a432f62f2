"""The launcher: a small fork server that starts sandboxed auditors for one scanfleet process.

Run by `scanfleet.sandbox.spawn`, once per scanfleet process, with no site packages:

    python -I -S .../scanfleet/sandbox/forkserver.py SOCKET_FD

It is single-threaded, makes itself non-dumpable, and serves spawn requests that arrive
on a SOCK_SEQPACKET socket (one JSON message each, with the auditor's stdin, stdout and
stderr attached as SCM_RIGHTS):

    {"op": "spawn", "id": N, "argv": [...], "env": {...}, "cwd": "...", "policy": {...}}

For each it forks; between fork and exec the child confines itself (own session,
PR_SET_PDEATHSIG relative to the launcher, no capabilities, no_new_privs, Landlock;
`confine.confine`, the one implementation) and execs. Replies, by id:

    {"id": N, "event": "started", "pid": P}            the exec succeeded
    {"id": N, "event": "failed", "kind": "sandbox"|"exec", "detail": "..."}
    {"id": N, "event": "exit", "pid": P, "status": S}  the auditor's wait status

Forking here is safe by construction: this process has one thread and holds nothing of
the worker's (an empty environment, no credentials). Starting an auditor costs a fork of
this small interpreter instead of a new interpreter per scan.

What it must never do:
- outlive its scanfleet process: on EOF of the socket (the worker exited or was killed)
  it SIGKILLs every auditor process group it started and exits; its auditors also die
  with it (PR_SET_PDEATHSIG);
- exec an auditor whose confinement failed (the child reports why and exits 125);
- import anything outside the standard library (besides `confine`, which is
  standard library only), or log the environment or argv it was sent.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import sys
import time
from typing import Any

try:
    from scanfleet.sandbox import confine
except ImportError:  # run as a script with -I -S: confine.py lies next to this file
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))
    import confine  # type: ignore[import-not-found, no-redef]

MAX_MESSAGE = 1 << 20
FDS_PER_SPAWN = 3
EXIT_SANDBOX = confine.EXIT_SANDBOX
# Groups whose leader exited this recently are still killed at EOF (stragglers such as a
# `kubectl exec` left behind); older numbers may have been reused.
_STRAGGLER_WINDOW_S = 300.0
_RESET_SIGNALS = ("SIGPIPE", "SIGXFSZ", "SIGXFZ", "SIGINT", "SIGTERM", "SIGCHLD")


class _Child:
    """One auditor between fork and its exit (a plain class: dataclasses import inspect)."""

    __slots__ = ("errfd", "failure", "id", "pid", "pidfd")

    def __init__(self, id_: int, pid: int, pidfd: int, errfd: int) -> None:
        self.id, self.pid, self.pidfd = id_, pid, pidfd
        self.errfd: int | None = errfd
        self.failure = bytearray()


class Server:
    """The serve loop: requests in, forks, replies out."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sel = selectors.DefaultSelector()
        self.children: dict[int, _Child] = {}
        self.exited: dict[int, float] = {}  # pgid -> when its leader exited
        self.pid = os.getpid()

    def serve(self) -> None:
        """Run until the socket reaches EOF; then kill every group started and return."""
        self.sel.register(self.sock, selectors.EVENT_READ, None)
        try:
            while self._step():
                pass
        finally:
            self.shutdown()

    def _step(self) -> bool:
        for key, _ in self.sel.select():
            if key.data is None:
                if not self._request():
                    return False
                continue
            what, child = key.data
            if what == "err":
                self._read_failure(child)
            else:
                self._reap(child)
        return True

    def _request(self) -> bool:
        try:
            data, fds, _flags, _addr = socket.recv_fds(
                self.sock, MAX_MESSAGE, FDS_PER_SPAWN, socket.MSG_CMSG_CLOEXEC
            )
        except ConnectionError:
            return False
        if not data:
            for fd in fds:
                os.close(fd)
            return False
        try:
            msg = json.loads(data)
            if msg.get("op") == "info":
                self._send(
                    {
                        "id": msg.get("id"),
                        "event": "info",
                        "pid": self.pid,
                        "dumpable": confine.is_dumpable(),
                    }
                )
            elif len(fds) != FDS_PER_SPAWN:
                self._send(
                    {
                        "id": msg.get("id"),
                        "event": "failed",
                        "kind": "sandbox",
                        "detail": "spawn request without its three descriptors",
                    }
                )
            else:
                self._spawn(msg, fds)
        finally:
            for fd in fds:
                os.close(fd)
        return True

    def _spawn(self, msg: dict[str, Any], fds: list[int]) -> None:
        rfd, wfd = os.pipe()
        try:
            pid = os.fork()
        except OSError as e:
            os.close(rfd)
            os.close(wfd)
            self._send(
                {
                    "id": msg["id"],
                    "event": "failed",
                    "kind": "sandbox",
                    "detail": f"fork: {e.strerror}",
                }
            )
            return
        if pid == 0:
            child(msg, fds, wfd, self.pid)  # never returns
        os.close(wfd)
        os.set_blocking(rfd, False)
        pidfd = os.pidfd_open(pid)
        c = _Child(int(msg["id"]), pid, pidfd, rfd)
        self.children[pid] = c
        self.sel.register(rfd, selectors.EVENT_READ, ("err", c))
        self.sel.register(pidfd, selectors.EVENT_READ, ("pid", c))

    def _read_failure(self, c: _Child) -> None:
        """Read the child's error pipe; at EOF the child either exec'd or failed."""
        assert c.errfd is not None
        while True:
            try:
                chunk = os.read(c.errfd, 4096)
            except BlockingIOError:
                return
            if not chunk:
                break
            c.failure += chunk
        self.sel.unregister(c.errfd)
        os.close(c.errfd)
        c.errfd = None
        if not c.failure:
            self._send({"id": c.id, "event": "started", "pid": c.pid})
            return
        kind, _, detail = c.failure.decode(errors="replace").strip().partition("\t")
        self._send({"id": c.id, "event": "failed", "kind": kind or "sandbox", "detail": detail})

    def _reap(self, c: _Child) -> None:
        if c.errfd is not None:  # dead, so the pipe is at EOF: report that first
            self._read_failure(c)
        _, status = os.waitpid(c.pid, 0)
        self.sel.unregister(c.pidfd)
        os.close(c.pidfd)
        del self.children[c.pid]
        if not c.failure:
            self.exited[c.pid] = time.monotonic()
            self._send({"id": c.id, "event": "exit", "pid": c.pid, "status": status})
        if len(self.exited) > 4096:
            self._forget_old()

    def _forget_old(self) -> None:
        cutoff = time.monotonic() - _STRAGGLER_WINDOW_S
        self.exited = {g: t for g, t in self.exited.items() if t > cutoff}

    def _send(self, msg: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):  # the client is gone: the next select sees EOF
            self.sock.send(json.dumps(msg).encode())

    def shutdown(self) -> None:
        """SIGKILL every group still running, or whose leader exited recently."""
        self._forget_old()
        for pgid in [*self.children, *self.exited]:
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)
        for c in list(self.children.values()):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(c.pid, 0)


def child(msg: dict[str, Any], fds: list[int], errfd: int, launcher: int) -> None:
    """In the forked child: confine, then exec. Never returns."""
    try:
        for name in _RESET_SIGNALS:
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), signal.SIG_DFL)
        os.setsid()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.closerange(3, errfd)
        os.closerange(errfd + 1, 1 << 16)
        env = {str(k): str(v) for k, v in msg["env"].items()}
        argv = [str(a) for a in msg["argv"]]
        _exec(argv, env, str(msg.get("cwd") or "/"), msg["policy"], errfd, launcher)
    except BaseException as e:  # whatever happened, nothing may run
        _report(errfd, "sandbox", f"{e.__class__.__name__}: {e}")
    finally:
        os._exit(EXIT_SANDBOX)


def _exec(
    argv: list[str],
    env: dict[str, str],
    cwd: str,
    policy: dict[str, object],
    errfd: int,
    launcher: int,
) -> None:
    try:
        os.chdir(cwd)
    except OSError as e:
        _report(errfd, "sandbox", f"cannot enter the working directory: {e.strerror}")
        return
    try:
        if not argv:
            raise confine.SandboxError("no command to run")
        executable = confine.which(argv[0], env.get("PATH", os.defpath))
    except OSError as e:
        _report(errfd, "exec", f"{e.strerror} ({e.__class__.__name__})")
        return
    except confine.SandboxError as e:
        _report(errfd, "sandbox", str(e))
        return
    try:
        confine.confine(policy, launcher)
    except Exception as e:  # anything at all: the auditor must not run half-confined
        _report(errfd, "sandbox", f"{e.__class__.__name__}: {e}")
        return
    try:
        os.execve(executable, argv, env)  # noqa: S606 (a list argv, never a shell)
    except OSError as e:
        _report(errfd, "exec", f"{e.strerror} ({e.__class__.__name__})")


def _report(fd: int, kind: str, detail: str) -> None:
    os.write(fd, f"{kind}\t{detail}\n".encode(errors="replace"))


def main(argv: list[str]) -> int:
    sock = socket.socket(fileno=int(argv[0]))
    os.set_inheritable(sock.fileno(), False)
    confine.make_non_dumpable()
    # Signals of the terminal's process group do not reach it (own session); a SIGTERM
    # aimed at it ends it like an EOF would, its auditors with it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    Server(sock).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
