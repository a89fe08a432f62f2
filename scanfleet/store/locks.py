"""The sweep lock: one run of a sweep at a time, across beat processes and workers.

`<prefix>:sweep:<name>:lock` holds a `pending:<token>` while a tick starts its run, then
that run's id until the run is finalized (run store) or its run.json exists; `LOCK_TTL` is
the backstop for a run that never finishes, `PENDING_TTL` for a start that never binds.
Compare-and-set in Lua, every call `guarded`. Must never start or judge a run itself.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any, Protocol

from scanfleet.core.errors import BadInput, ResultsUnavailable
from scanfleet.store.client import call
from scanfleet.store.results import RUN_FILE, ResultsStore, as_results

LOCK_TTL = 24 * 3600
"""Backstop: a sweep lock whose run never finishes frees itself after this many seconds."""
PENDING_TTL = 15 * 60
"""While a run is being started the lock holds a token, not yet a run id; bounded by this."""

_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
  return 1
end
return 0
"""
# Replace the value only while we hold it (compare-and-set); '' as new value deletes.
_SWAP = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) end
return 1
"""


class LockStore(Protocol):
    """What the sweep lock needs from `scanfleet.store.RunStore`."""

    prefix: str

    def script(self, source: str) -> Any: ...

    def is_finalized(self, run_id: str) -> bool: ...


class SweepLock:
    """One sweep at a time, across beat processes and workers."""

    def __init__(self, store: LockStore, results_dir: ResultsStore | Path) -> None:
        self.store = store
        self.results = as_results(results_dir)
        self._acquire = store.script(_ACQUIRE)
        self._swap = store.script(_SWAP)
        self._get = store.script("return redis.call('GET', KEYS[1])")

    def key(self, sweep: str) -> str:
        return f"{self.store.prefix}:sweep:{sweep}:lock"

    def holder(self, sweep: str) -> str | None:
        value = call("reading a sweep lock", self._get, keys=[self.key(sweep)])
        return None if value is None else str(value)

    def finished(self, run_id: str) -> bool:
        if run_id.startswith("pending:"):
            return False
        try:
            if self.results.exists(run_id, RUN_FILE):
                return True
        except (BadInput, ResultsUnavailable):  # not a run id, or unreadable: ask Redis
            pass
        return self.store.is_finalized(run_id)  # guarded by the store

    def try_acquire(self, sweep: str) -> tuple[str | None, str | None]:
        """(our token, None) when acquired, else (None, what holds it)."""
        token = f"pending:{secrets.token_hex(8)}"
        key = self.key(sweep)
        held = self.holder(sweep)
        stale = held if held is not None and self.finished(held) else ""
        if call("taking a sweep lock", self._acquire, keys=[key], args=[token, stale, PENDING_TTL]):
            return token, None
        return None, self.holder(sweep) or held

    def bind(self, sweep: str, token: str, run_id: str, ttl: int) -> bool:
        """Replace our pending token with the run id, for the run's lifetime (ttl backstop)."""
        return bool(
            call(
                "binding a sweep lock",
                self._swap,
                keys=[self.key(sweep)],
                args=[token, run_id, ttl],
            )
        )

    def release(self, sweep: str, token: str) -> None:
        call("releasing a sweep lock", self._swap, keys=[self.key(sweep)], args=[token, "", 0])
