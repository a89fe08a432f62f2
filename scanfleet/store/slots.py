"""Per-cluster slots: at most N scans at once against one context.

Two implementations of one seam, `Slots.slot(context, scan_id)`, passing one contract test:

- `RedisSlots` (the fleet): a sorted set per context, member = scan id, score = expiry
  (Redis server time, so worker clocks do not matter). Acquiring is one Lua script that
  first drops expired members, so a `kill -9`'d worker holds its slot only until its lease
  expires; a heartbeat thread renews the lease while the scan runs; release removes it.
  The member being the scan id doubles as scan ownership: a redelivered copy of a scan that
  is still running elsewhere finds its own id leased and backs off (`SlotBusy`) instead of
  running the same scan twice at once.
- Recovery (fleet): next to each lease, `<prefix>:rerun:<context>` holds the lease's owner
  record, scan id -> `<token>` newline `{"run_id", "target"}`: who holds the lease (a fresh
  token per acquisition) and what is needed to run the scan again. It is written with the
  lease and removed with it when the scan ends (just before the driver records the result).
  `claim_expired(context)` takes, atomically, the records whose lease has expired: one
  caller gets each, so two workers noticing the same dead lease never both re-run it
  (recovery.py revokes and re-publishes). A scan that was only slow and finds its record
  claimed (heartbeat or release) ends with `SlotBusy`: its result is not recorded, the
  re-run's is. `<prefix>:lease-contexts` lists the contexts that have records.
  A record names the worker holding it (`holder`, the id of `holders.MessageHolders`): while
  that worker's own lease is live, its scan's expired lease is left alone for one more lease
  period (the worker died a moment ago and its message is about to come back through
  `claim_dead`, or a child stalled); `recovery.py` re-publishes only scans whose worker is
  alive, since a dead worker's message is given back to the queue, and one copy runs.
- `LocalSlots` (`submit --local`, `scan`): one semaphore per context, in process.

Every Redis call is `guarded`: a Redis outage while acquiring raises `StoreUnavailable`
(retryable), never a RedisError a driver could record as a scan error. Never talks to
Kubernetes; never sees a credential.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

import structlog

from scanfleet.core import metrics
from scanfleet.core.errors import NoSlot, SlotBusy, StoreUnavailable
from scanfleet.store.client import call
from scanfleet.store.state import RunStore

log = structlog.get_logger(__name__)


class Slots(Protocol):
    def slot(self, context: str, scan_id: str, rerun: Mapping[str, Any] | None = None) -> Any:
        """A context manager holding one of the context's slots; raises NoSlot if none.

        `rerun` (JSON-able: run id and target) is what a fleet needs to run the scan again
        if this holder dies; in-process slots ignore it."""
        ...


# KEYS: lease set, owner records, lease-contexts set. ARGV: cap, lease seconds, member,
# key ttl, owner record (token newline rerun JSON), context.
# Returns 1 acquired, 0 cap reached, -1 the member already holds a live lease.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then return -1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('SADD', KEYS[3], ARGV[6])
redis.call('EXPIRE', KEYS[3], ARGV[4])
return 1
"""

# Is the owner record of ARGV[3] ours (starts with our token ARGV[4])?
_OURS = """
local function ours()
  local rec = redis.call('HGET', KEYS[2], ARGV[3])
  return rec and string.sub(rec, 1, #ARGV[4]) == ARGV[4]
end
"""

# Renew our lease. Our owner record gone or replaced: the lease expired and recovery
# claimed it (-1). If it had expired and been dropped (a long pause) but nobody claimed
# it, take a slot again only if one is free: never renew past the cap. 1 held, 0 lost.
_RENEW = (
    _OURS
    + """
if not ours() then return -1 end
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
)

# Release our lease and its owner record; 0 if they are no longer ours (claimed).
_RELEASE = (
    _OURS
    + """
if not ours() then return 0 end
redis.call('ZREM', KEYS[1], ARGV[3])
redis.call('HDEL', KEYS[2], ARGV[3])
return 1
"""
)

# KEYS: lease set, owner records, workers (holders.py). ARGV: grace seconds.
# Take every record whose lease expired (or was dropped as expired by another
# acquisition): {scan_id, record, ...}, each to one caller only. A record whose holding
# worker is alive waits `grace` past its expiry (a dropped one waits for the worker).
_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local flat = redis.call('HGETALL', KEYS[2])
local out = {}
local function holder_alive(rec)
  local nl = string.find(rec, '\\n', 1, true)
  if not nl then return false end
  local ok, doc = pcall(cjson.decode, string.sub(rec, nl + 1))
  if not ok or type(doc) ~= 'table' or type(doc['worker']) ~= 'string' then return false end
  local w = redis.call('ZSCORE', KEYS[3], doc['worker'])
  return w and tonumber(w) > now
end
for i = 1, #flat, 2 do
  local score = redis.call('ZSCORE', KEYS[1], flat[i])
  local expired = (not score) or tonumber(score) <= now
  if expired and holder_alive(flat[i + 1]) then
    expired = score and tonumber(score) + tonumber(ARGV[1]) <= now
  end
  if expired then
    redis.call('HDEL', KEYS[2], flat[i])
    redis.call('ZREM', KEYS[1], flat[i])
    out[#out + 1] = flat[i]
    out[#out + 1] = flat[i + 1]
  end
end
return out
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
        holder: str | None = None,
    ) -> None:
        if cap < 1:
            raise ValueError("cluster concurrency must be at least 1")
        self.store = store
        self.cap = cap
        self.lease_seconds = lease_seconds
        self.holder = holder
        """The worker id (holders.py) written into each owner record; None: no worker."""
        self.wait_seconds = wait_seconds
        self.poll_seconds = poll_seconds
        self._acquire = store.script(_ACQUIRE)
        self._renew = store.script(_RENEW)
        self._release = store.script(_RELEASE)
        self._claim = store.script(_CLAIM)

    def _keys(self, context: str) -> list[str]:
        p = self.store.prefix
        return [self.store.lease_key(context), f"{p}:rerun:{context}", f"{p}:lease-contexts"]

    def try_acquire(
        self, context: str, scan_id: str, token: str = "", rerun: Mapping[str, Any] | None = None
    ) -> int:
        body = dict(rerun or {})
        if self.holder is not None and body:
            body["worker"] = self.holder
        record = f"{token}\n{json.dumps(body, separators=(',', ':'))}"
        return int(
            call(
                "acquiring a cluster slot",
                self._acquire,
                keys=self._keys(context),
                args=[self.cap, self.lease_seconds, scan_id, self.store.ttl, record, context],
            )
        )

    def renew(self, context: str, scan_id: str, token: str = "") -> int:
        """1 held, 0 lost to the cap, -1 claimed by recovery (the lease had expired)."""
        return int(
            call(
                "renewing a cluster slot",
                self._renew,
                keys=self._keys(context)[:2],
                args=[self.cap, self.lease_seconds, scan_id, f"{token}\n"],
            )
        )

    def release(self, context: str, scan_id: str, token: str = "") -> bool:
        """Drop our lease and its owner record; False if recovery had claimed them."""
        return bool(
            call(
                "releasing a cluster slot",
                self._release,
                keys=self._keys(context)[:2],
                args=[self.cap, self.lease_seconds, scan_id, f"{token}\n"],
            )
        )

    def lease_contexts(self) -> list[str]:
        """Contexts whose leases carry owner records (what `claim_expired` looks at)."""
        members = call("reading lease contexts", self.store.r.smembers, self._keys("")[2])
        return sorted(str(m) for m in members)

    def claim_expired(self, context: str) -> list[tuple[str, dict[str, Any]]]:
        """Take the (scan id, rerun) of every expired lease on `context`, atomically: a
        record is returned to one caller only, and is gone from Redis afterwards."""
        flat = call(
            "claiming expired leases",
            self._claim,
            keys=[*self._keys(context)[:2], f"{self.store.prefix}:workers"],
            args=[self.lease_seconds],
        )
        out: list[tuple[str, dict[str, Any]]] = []
        for i in range(0, len(flat), 2):
            _token, _, body = str(flat[i + 1]).partition("\n")
            try:
                rerun = json.loads(body) if body else {}
            except ValueError:
                rerun = {}
            out.append((str(flat[i]), rerun if isinstance(rerun, dict) else {}))
        return out

    def holders(self, context: str) -> list[str]:
        """Scan ids holding a live lease on a context (for status and tests)."""
        now = call("reading the server time", self.store.r.time)
        t = float(now[0]) + float(now[1]) / 1e6
        members = call(
            "reading cluster slots",
            self.store.r.zrangebyscore,
            self.store.lease_key(context),
            t,
            "+inf",
        )
        return [str(m) for m in members]

    @contextmanager
    def slot(
        self, context: str, scan_id: str, rerun: Mapping[str, Any] | None = None
    ) -> Iterator[None]:
        """Wait briefly for a slot; NoSlot (retry later) if the cluster stays full.

        SlotBusy when this scan's lease is live elsewhere, and also at the end of a scan
        whose lease expired meanwhile and was claimed by recovery (its re-run counts)."""
        token = secrets.token_hex(8)
        deadline = time.monotonic() + self.wait_seconds
        while True:
            got = self.try_acquire(context, scan_id, token, rerun)
            if got == 1:
                break
            if got == -1:
                raise SlotBusy(f"scan {scan_id} is already running on another worker")
            if time.monotonic() >= deadline:
                raise NoSlot(f"context {context!r} is at its concurrency cap ({self.cap} scans)")
            time.sleep(self.poll_seconds)
        stop, claimed = threading.Event(), threading.Event()
        beat = threading.Thread(
            target=self._heartbeat,
            args=(context, scan_id, token, stop, claimed),
            daemon=True,
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
                if not self.release(context, scan_id, token):
                    claimed.set()
            except StoreUnavailable as e:  # the lease expires by itself; never mask the scan
                log.warning(
                    "lease.release_failed", context=context, scan_id=scan_id, error=type(e).__name__
                )
        if claimed.is_set():
            raise SlotBusy(f"the lease of scan {scan_id} expired and another worker re-ran it")

    def _heartbeat(
        self,
        context: str,
        scan_id: str,
        token: str,
        stop: threading.Event,
        claimed: threading.Event,
    ) -> None:
        interval = max(0.5, self.lease_seconds / 3)
        while not stop.wait(interval):
            try:
                held = self.renew(context, scan_id, token)
            except Exception as e:  # Redis restarting: keep trying while the scan runs
                log.warning(
                    "lease.renew_failed", context=context, scan_id=scan_id, error=type(e).__name__
                )
                continue
            if held == -1:
                log.warning("lease.claimed", context=context, scan_id=scan_id)
                claimed.set()
                return
            if not held:
                log.warning("lease.lost", context=context, scan_id=scan_id)


class LocalSlots:
    """In-process cap: one bounded semaphore per context."""

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError("cluster concurrency must be at least 1")
        self.cap = cap
        self._lock = threading.Lock()
        self._sems: dict[str, threading.BoundedSemaphore] = {}

    @contextmanager
    def slot(
        self, context: str, scan_id: str, rerun: Mapping[str, Any] | None = None
    ) -> Iterator[None]:
        with self._lock:
            sem = self._sems.setdefault(context, threading.BoundedSemaphore(self.cap))
        with sem:
            yield
