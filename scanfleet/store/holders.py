"""Who holds which broker message: owner records of what a worker has taken from the queue.

A worker takes a message from the queue long before (or without ever) holding a cluster-slot
lease: a prefetched (reserved) message waiting for a free process, a deferred retry it keeps
in memory until its countdown (Celery ETA), a scan waiting for a slot. The broker gives such
a message back only after its visibility timeout (above the longest scan: many minutes). So
every worker's main process keeps, in Redis:

- `<prefix>:workers`: a sorted set, member = worker id (fresh per worker process), score =
  the expiry of the worker's lease (Redis server time), renewed by `beat` every lease/3;
- `<prefix>:held`: hash, delivery tag -> worker id: the last worker that received the
  message (a message given back and taken again changes hands);
- `<prefix>:held:<worker id>`: the tags that worker received (an index: `held` decides).

`hold` records a tag the moment the worker receives the message (before it is reserved,
scheduled or run). `beat` renews the worker's lease and forgets the tags the broker no
longer has outstanding (acknowledged: the caller names the broker's hash of unacknowledged
messages, kombu's `unacked`), so the records stay as small as what is in flight.
`claim_dead` takes, atomically, every worker whose lease expired with the tags it still
held: one caller gets each worker, which then gives its messages back to the queue
(`worker.tasks`, through kombu) at once instead of after the visibility timeout.

The broker records a delivery (kombu's `unacked` hash) a moment before the worker's
`task_received` records it here: a worker killed in between leaves a message that no
record names. `claim_unheld` finds such messages of our queue; one still unheld a grace
period after it was first seen (`<prefix>:unheld`, tag -> Redis time) is taken by one
caller, who gives it back. A live worker records its message within milliseconds, so
the grace (half a lease) only has to outlast a stalled main process; if it does not, the
message is delivered twice, which the scan task tolerates (one result per target).

Never talks to Kubernetes or Celery; never sees a message body.
"""

from __future__ import annotations

from typing import Any

from scanfleet.store.client import call, guarded
from scanfleet.store.state import RunStore

# KEYS: workers, held, held:<id>. ARGV: id, lease seconds, key ttl, tag.
_HOLD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[1], 'GT', now + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[4], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[4])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
return 1
"""

# KEYS: workers, held, held:<id>, the broker's unacked hash. ARGV: id, lease, key ttl.
# Renew the worker's lease; forget tags no longer outstanding or now held by another.
_BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local kept = 0
for _, tag in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local owner = redis.call('HGET', KEYS[2], tag)
  if owner ~= ARGV[1] then
    redis.call('SREM', KEYS[3], tag)
  elseif redis.call('HEXISTS', KEYS[4], tag) == 0 then
    redis.call('SREM', KEYS[3], tag)
    redis.call('HDEL', KEYS[2], tag)
  else
    kept = kept + 1
  end
end
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
return kept
"""

# KEYS: workers, held. ARGV: the held-set key prefix ("<prefix>:held:").
# Take every worker whose lease expired: {id, n, tag1..tagn, ...}, each to one caller.
_CLAIM_DEAD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  redis.call('ZREM', KEYS[1], id)
  local key = ARGV[1] .. id
  local tags = {}
  for _, tag in ipairs(redis.call('SMEMBERS', key)) do
    if redis.call('HGET', KEYS[2], tag) == id then
      redis.call('HDEL', KEYS[2], tag)
      tags[#tags + 1] = tag
    end
  end
  redis.call('DEL', key)
  out[#out + 1] = id
  out[#out + 1] = #tags
  for _, tag in ipairs(tags) do out[#out + 1] = tag end
end
return out
"""

# KEYS: the broker's unacked hash, held, unheld. ARGV: our routing key, grace seconds,
# key ttl. Messages of our queue that no worker record names: note when each was first
# seen; return (and forget) those still unheld after the grace. A tag recorded again, or
# acknowledged, is forgotten.
_CLAIM_UNHELD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out = {}
for _, tag in ipairs(redis.call('HKEYS', KEYS[1])) do
  if redis.call('HEXISTS', KEYS[2], tag) == 0 then
    local ok, entry = pcall(cjson.decode, redis.call('HGET', KEYS[1], tag))
    if ok and type(entry) == 'table' and entry[3] == ARGV[1] then
      local first = redis.call('HGET', KEYS[3], tag)
      if not first then
        redis.call('HSET', KEYS[3], tag, now)
      elseif now - tonumber(first) >= tonumber(ARGV[2]) then
        redis.call('HDEL', KEYS[3], tag)
        out[#out + 1] = tag
      end
    end
  end
end
for _, tag in ipairs(redis.call('HKEYS', KEYS[3])) do
  if redis.call('HEXISTS', KEYS[1], tag) == 0 or redis.call('HEXISTS', KEYS[2], tag) == 1 then
    redis.call('HDEL', KEYS[3], tag)
  end
end
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('EXPIRE', KEYS[3], ARGV[3]) end
return out
"""

# KEYS: workers, held, held:<id>. ARGV: id. A worker shutting down cleanly (the broker
# gives its unacknowledged messages back itself) drops its records.
_DROP = """
redis.call('ZREM', KEYS[1], ARGV[1])
for _, tag in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  if redis.call('HGET', KEYS[2], tag) == ARGV[1] then redis.call('HDEL', KEYS[2], tag) end
end
redis.call('DEL', KEYS[3])
return 1
"""


class MessageHolders:
    """The owner records of the messages every worker has taken from the queue."""

    def __init__(self, store: RunStore, lease_seconds: float) -> None:
        self.store = store
        self.lease_seconds = lease_seconds
        self._hold = store.script(_HOLD)
        self._beat = store.script(_BEAT)
        self._claim = store.script(_CLAIM_DEAD)
        self._drop = store.script(_DROP)
        self._claim_unheld = store.script(_CLAIM_UNHELD)

    @property
    def workers_key(self) -> str:
        return f"{self.store.prefix}:workers"

    @property
    def held_key(self) -> str:
        return f"{self.store.prefix}:held"

    def _keys(self, worker: str) -> list[str]:
        return [self.workers_key, self.held_key, f"{self.held_key}:{worker}"]

    def hold(self, worker: str, tag: str) -> None:
        """`worker` has received the message `tag` (and its lease is live from now on)."""
        call(
            "recording a received message",
            self._hold,
            keys=self._keys(worker),
            args=[worker, self.lease_seconds, self.store.ttl, tag],
        )

    def beat(self, worker: str, unacked_key: str) -> int:
        """Renew `worker`'s lease; forget its tags absent from `unacked_key` (acknowledged).
        Returns how many messages it still holds."""
        return int(
            call(
                "renewing a worker's lease",
                self._beat,
                keys=[*self._keys(worker), unacked_key],
                args=[worker, self.lease_seconds, self.store.ttl],
            )
        )

    def claim_dead(self) -> dict[str, list[str]]:
        """Take every worker whose lease expired, with the tags it held: {worker id: tags}.
        Atomic: each dead worker is returned to one caller only, and its records are gone."""
        flat: list[Any] = call(
            "claiming dead workers",
            self._claim,
            keys=self._keys("")[:2],
            args=[f"{self.held_key}:"],
        )
        out: dict[str, list[str]] = {}
        i = 0
        while i < len(flat):
            worker, n = str(flat[i]), int(flat[i + 1])
            out[worker] = [str(tag) for tag in flat[i + 2 : i + 2 + n]]
            i += 2 + n
        return out

    def claim_unheld(self, unacked_key: str, queue: str) -> list[str]:
        """The messages of `queue` outstanding in `unacked_key` that no worker has recorded
        for half a lease since first seen (their worker died between the broker's record
        and its own): each returned to one caller only."""
        got = call(
            "claiming unrecorded messages",
            self._claim_unheld,
            keys=[unacked_key, self.held_key, f"{self.store.prefix}:unheld"],
            args=[queue, self.lease_seconds / 2, self.store.ttl],
        )
        return [str(tag) for tag in got]

    def alive(self, worker: str) -> bool:
        """Whether `worker`'s lease is live (False once expired or claimed)."""
        score = call("reading a worker's lease", self.store.r.zscore, self.workers_key, worker)
        if score is None:
            return False
        now = call("reading the server time", self.store.r.time)
        return float(score) > float(now[0]) + float(now[1]) / 1e6

    def drop(self, worker: str) -> None:
        """A clean shutdown: forget `worker` and its records."""
        call("dropping a worker's records", self._drop, keys=self._keys(worker), args=[worker])

    def broker_idle(self, queue_key: str, unacked_key: str) -> bool:
        """No message queued on `queue_key` and none unacknowledged in `unacked_key`."""
        with guarded("reading the broker's queue"):
            pipe = self.store.r.pipeline(transaction=True)
            pipe.llen(queue_key)
            pipe.hlen(unacked_key)
            queued, unacked = pipe.execute()
        return int(queued) == 0 and int(unacked) == 0

    def recent_runs(self, n: int = 20) -> list[str]:
        """The `n` most recently created runs (`<prefix>:runs`), newest first."""
        got = call("listing runs", self.store.r.zrevrange, f"{self.store.prefix}:runs", 0, n - 1)
        return [str(r) for r in got]

    def claim_orphans(self, run_id: str, seconds: float) -> bool:
        """One worker per `seconds` re-queues a run's orphaned targets (SET NX with expiry)."""
        key = f"{self.store.prefix}:run:{run_id}:orphans"
        ms = max(1, int(seconds * 1000))
        return bool(call("claiming orphaned targets", self.store.r.set, key, "1", nx=True, px=ms))
