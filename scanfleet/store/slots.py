"""Per-cluster slots: at most N scans at once against one context.

Two implementations of one seam, `Slots.slot(context, scan_id)`, passing one contract test:

- `RedisSlots` (the fleet): a sorted set per context, member = scan id, score = expiry
  (Redis server time, so worker clocks do not matter). Acquiring is one Lua script that
  first drops expired members, so a `kill -9`'d worker holds its slot only until its lease
  expires; a heartbeat thread renews the lease while the scan runs; release removes it.
  The member being the scan id doubles as scan ownership: a redelivered copy of a scan that
  is still running elsewhere finds its own id leased and backs off (`SlotBusy`) instead of
  running the same scan twice at once.
- `LocalSlots` (`submit --local`, `scan`): one semaphore per context, in process.

Every Redis call is `guarded`: a Redis outage while acquiring raises `StoreUnavailable`
(retryable), never a RedisError a driver could record as a scan error. Never talks to
Kubernetes; never sees a credential.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import structlog

from scanfleet import metrics
from scanfleet.errors import NoSlot, SlotBusy, StoreUnavailable
from scanfleet.store.client import call
from scanfleet.store.runs import RunStore

log = structlog.get_logger("scanfleet.slots")


class Slots(Protocol):
    def slot(self, context: str, scan_id: str) -> Any:
        """A context manager holding one of the context's slots; raises NoSlot if none."""
        ...


# KEYS[1] lease set. ARGV: cap, lease seconds, member, key ttl.
# Returns 1 acquired, 0 cap reached, -1 the member already holds a live lease.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then return -1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""

# Renew our lease. If it had expired and been dropped (a long pause), take a slot again
# only if one is free: never renew past the cap. Returns 1 held, 0 lost.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  return 1
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
return 1
"""


class RedisSlots:
    """Cluster slots shared by every worker through Redis."""

    def __init__(
        self,
        store: RunStore,
        cap: int,
        *,
        lease_seconds: float = 60.0,
        wait_seconds: float = 2.0,
        poll_seconds: float = 0.2,
    ) -> None:
        if cap < 1:
            raise ValueError("cluster concurrency must be at least 1")
        self.store = store
        self.cap = cap
        self.lease_seconds = lease_seconds
        self.wait_seconds = wait_seconds
        self.poll_seconds = poll_seconds
        self._acquire = store.script(_ACQUIRE)
        self._renew = store.script(_RENEW)

    def try_acquire(self, context: str, scan_id: str) -> int:
        return int(
            call("acquiring a cluster slot", self._acquire, keys=[self.store.lease_key(context)],
                 args=[self.cap, self.lease_seconds, scan_id, self.store.ttl])
        )

    def renew(self, context: str, scan_id: str) -> bool:
        return bool(
            call("renewing a cluster slot", self._renew, keys=[self.store.lease_key(context)],
                 args=[self.cap, self.lease_seconds, scan_id])
        )

    def release(self, context: str, scan_id: str) -> None:
        call("releasing a cluster slot", self.store.r.zrem, self.store.lease_key(context),
             scan_id)

    def holders(self, context: str) -> list[str]:
        """Scan ids holding a live lease on a context (for status and tests)."""
        now = call("reading the server time", self.store.r.time)
        t = float(now[0]) + float(now[1]) / 1e6
        members = call("reading cluster slots", self.store.r.zrangebyscore,
                       self.store.lease_key(context), t, "+inf")
        return [str(m) for m in members]

    @contextmanager
    def slot(self, context: str, scan_id: str) -> Iterator[None]:
        """Wait briefly for a slot; NoSlot (retry later) if the cluster stays full."""
        deadline = time.monotonic() + self.wait_seconds
        while True:
            got = self.try_acquire(context, scan_id)
            if got == 1:
                break
            if got == -1:
                raise SlotBusy(f"scan {scan_id} is already running on another worker")
            if time.monotonic() >= deadline:
                raise NoSlot(
                    f"context {context!r} is at its concurrency cap ({self.cap} scans)"
                )
            time.sleep(self.poll_seconds)
        stop = threading.Event()
        beat = threading.Thread(
            target=self._heartbeat, args=(context, scan_id, stop), daemon=True,
            name=f"lease-{scan_id}",
        )
        beat.start()
        metrics.slot_acquired(context)
        try:
            yield
        finally:
            metrics.slot_released(context)
            stop.set()
            beat.join(timeout=5)
            try:
                self.release(context, scan_id)
            except StoreUnavailable as e:  # the lease expires by itself; never mask the scan
                log.warning("lease.release_failed", context=context, scan_id=scan_id,
                            error=type(e).__name__)

    def _heartbeat(self, context: str, scan_id: str, stop: threading.Event) -> None:
        interval = max(0.5, self.lease_seconds / 3)
        while not stop.wait(interval):
            try:
                if not self.renew(context, scan_id):
                    log.warning("lease.lost", context=context, scan_id=scan_id)
            except Exception as e:  # Redis restarting: keep trying while the scan runs
                log.warning("lease.renew_failed", context=context, scan_id=scan_id,
                            error=type(e).__name__)


class LocalSlots:
    """In-process cap: one bounded semaphore per context."""

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError("cluster concurrency must be at least 1")
        self.cap = cap
        self._lock = threading.Lock()
        self._sems: dict[str, threading.BoundedSemaphore] = {}

    @contextmanager
    def slot(self, context: str, scan_id: str) -> Iterator[None]:
        with self._lock:
            sem = self._sems.setdefault(context, threading.BoundedSemaphore(self.cap))
        with sem:
            yield
