"""Scan directories in use, and what a dead worker left behind: found and removed at start.

A scan's private directory (`<tmp>/scanfleet-*`, created 0700 by the identity step) is
locked (flock) by the process that runs its auditor for as long as the auditor runs, and
records the auditor's session (`auditor.pid`: pid and start time) where the auditor cannot
write. The auditor dies with the thread that started it (PR_SET_PDEATHSIG), but what it
started (a `kubectl exec`) does not; `reap_stale()`, called at worker start, kills those
and removes the directories (and the live tokens in them) of scans whose worker died.

What it must never do:
- touch a directory that is locked (a live scan), owned by another user, or a symlink,
  nor one that holds anything but what a scan puts in its private directory (`kubeconfig`,
  `auditor.pid`, the auditor's `auditor/` work dir): a live worker's `scanfleet-metrics-*`
  or a results directory named `scanfleet-*` under the temp root is not a scan's;
- remove a directory that has not reached its auditor yet (still minting) unless it is
  older than `min_age`;
- kill a process that is not in the recorded auditor session (a reused pid is checked
  against its start time).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import structlog

PREFIX = "scanfleet-"
RECORD = "auditor.pid"
MIN_AGE_S = 900.0
# Everything a scan's private directory may hold (identity.py, auditor.py, sandbox.py).
SCAN_ENTRIES = frozenset({"kubeconfig", RECORD, "auditor"})

log = structlog.get_logger(__name__)


@contextlib.contextmanager
def hold(private_dir: Path) -> Iterator[None]:
    """Lock `private_dir` for the duration: `reap_stale` leaves it alone."""
    fd = os.open(private_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def record_auditor(private_dir: Path, pid: int) -> None:
    """Note the auditor's session (its pid) and start time for a later reaper."""
    start = start_time(pid)
    fd = os.open(private_dir / RECORD, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{pid} {start if start is not None else -1}\n")


def start_time(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat)."""
    stat = _stat(pid)
    return int(stat[19]) if stat is not None and len(stat) > 19 else None


def _stat(pid: int) -> list[bytes] | None:
    """Fields of /proc/PID/stat after `(comm)`: state is [0], session [3], start [19]."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2 :].split()


def reap_stale(tmp_root: Path | None = None, *, min_age: float = MIN_AGE_S) -> list[Path]:
    """Kill orphaned auditors and remove stale scan directories; the directories removed."""
    root = Path(tmp_root or tempfile.gettempdir())
    removed: list[Path] = []
    for d in sorted(root.glob(f"{PREFIX}*")):
        try:
            st = d.lstat()
        except OSError:
            continue
        if not d.is_dir() or d.is_symlink() or st.st_uid != os.getuid():
            continue
        if not _looks_like_a_scan(d):
            continue
        if _reap_one(d, st.st_mtime, min_age):
            removed.append(d)
    return removed


def _looks_like_a_scan(d: Path) -> bool:
    try:
        return set(os.listdir(d)) <= SCAN_ENTRIES
    except OSError:
        return False


def _reap_one(d: Path, mtime: float, min_age: float) -> bool:
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # an auditor of a live worker is running in it
        record = d / RECORD
        if not record.exists() and time.time() - mtime < min_age:
            return False  # maybe still minting
        killed = _kill_session(record)
        shutil.rmtree(d, ignore_errors=True)
        log.warning("sandbox.reaped", directory=str(d), killed=killed)
        return True
    finally:
        os.close(fd)


def _kill_session(record: Path) -> list[int]:
    """SIGKILL every process of the recorded auditor session; the pids killed."""
    try:
        sid_text, start_text = record.read_text().split()[:2]
        sid, start = int(sid_text), int(start_text)
    except (OSError, ValueError):
        return []
    leader = start_time(sid)
    if leader is not None and leader != start:
        return []  # the pid now belongs to an unrelated process: leave its session alone
    killed = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _stat(int(entry))
        if stat is None or len(stat) <= 19 or int(stat[3]) != sid or int(stat[19]) < start:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(int(entry), signal.SIGKILL)
            killed.append(int(entry))
    return killed
