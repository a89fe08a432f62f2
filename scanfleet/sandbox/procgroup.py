"""The auditor's process group: terminate it whole, and tell whether any of it still runs.

The auditor runs in its own session (`start_new_session`), so its pid is its group id.
`terminate_group` sends SIGTERM, then SIGKILL after a grace period, and never returns or
raises while a member of the group may still be alive. Must never signal anything outside
that group; never reads the environment.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Protocol

import structlog

log = structlog.get_logger(__name__)
POLL_MAX_S = 0.05


class GroupLeader(Protocol):
    """What is needed of the group's leader: a `subprocess.Popen` or a launcher handle."""

    pid: int

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


def terminate_group(proc: GroupLeader, grace: float) -> None:
    """SIGTERM the auditor's process group, SIGKILL whatever is alive after `grace` s.

    Robust against a second interruption: whatever happens while waiting out the grace
    period, the group gets SIGKILL before this returns or raises.
    """
    pgid = proc.pid  # start_new_session: the leader's pid is the group id
    killed = False
    try:
        if not group_alive(pgid) and proc.poll() is not None:
            return
        signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        delay = 0.001
        while time.monotonic() < deadline:
            # Reap the leader as soon as it exits; after that, a live pgid means stragglers.
            # (The pid is not reused while the group still has members.)
            if proc.poll() is not None and not group_alive(pgid):
                return
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, POLL_MAX_S)
        log.warning("auditor.kill", pid=pgid, grace_s=grace)
        signal_group(pgid, signal.SIGKILL)
        killed = True
    finally:
        if not killed and (proc.poll() is None or group_alive(pgid)):
            signal_group(pgid, signal.SIGKILL)
        proc.wait()


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def group_alive(pgid: int) -> bool:
    """True if a process of group `pgid` is still running (zombies do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg(0) also succeeds for zombies awaiting their (new) parent's wait; on Linux look
    # closer so a not-yet-reaped grandchild does not count as alive.
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ..." — comm may contain spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
