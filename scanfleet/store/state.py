"""Run state: `RunStore` in Redis (the fleet) and `MemoryRunState` (`scan`, `--local`).

Both implement `runs.pipeline.RunState` and pass one contract test. Must never know what a run is
for (sweeps, drift): it counts results and holds the finalize lock, nothing more.

One key prefix (`Settings.key_prefix`), and every key carries the retention TTL, so a
forgotten run disappears by itself. Per run, under `<prefix>:run:<run_id>:`:

    plan      string  the RunPlan as JSON (never a credential: contexts by name)
    meta      hash    total, created_at, results_dir, finished_at, exit_code
    targets   list    one JSON entry per target to scan (or to record as an error)
    covers    hash    scan_id -> JSON list of targets a --dedupe-images scan also answers
    state     hash    scan_id -> running | completed | error   (absent: queued)
    counts    hash    running, completed, error
    done      set     scan ids that have their summary; SADD makes redelivery idempotent
    finalize  string  SET NX lock: one worker aggregates the run
    result    string  run.json's body, once written (what `submit --wait`/`status` print)

Global: `<prefix>:runs` (sorted set of run ids by creation time) and the per-cluster lease
sets `<prefix>:lease:<context>` (see store/slots.py). Counters move only inside Lua scripts, so
a redelivered or duplicated task can never count a target twice.

Never stores a token or kubeconfig content; task messages and these keys name contexts only.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from scanfleet.judging.documents import RunDocument, RunPhase
from scanfleet.store.client import connect, guarded

if TYPE_CHECKING:
    from redis import Redis

_PUSH_BATCH = 1000


_MARK_RUNNING = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old == 'completed' or old == 'error' then return 0 end
if old ~= 'running' then
  redis.call('HSET', KEYS[1], ARGV[1], 'running')
  redis.call('HINCRBY', KEYS[2], 'running', 1)
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
return 1
"""

# KEYS: done, state, counts, meta. ARGV: ttl, then scan_id, status pairs.
# Returns {newly recorded, done count, total}.
_FINISH = """
local added = 0
for i = 2, #ARGV, 2 do
  local sid, status = ARGV[i], ARGV[i + 1]
  if redis.call('SADD', KEYS[1], sid) == 1 then
    added = added + 1
    local old = redis.call('HGET', KEYS[2], sid)
    if old == 'running' then redis.call('HINCRBY', KEYS[3], 'running', -1) end
    redis.call('HSET', KEYS[2], sid, status)
    redis.call('HINCRBY', KEYS[3], status, 1)
  end
end
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[1]) end
local total = tonumber(redis.call('HGET', KEYS[4], 'total') or '-1')
return {added, redis.call('SCARD', KEYS[1]), total}
"""


@dataclass(frozen=True)
class RunStatus:
    run_id: str
    total: int
    queued: int
    running: int
    completed: int
    error: int
    created_at: str | None
    finished_at: str | None
    exit_code: int | None

    @property
    def done(self) -> int:
        return self.completed + self.error

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    @property
    def state(self) -> RunPhase:
        if self.finished:
            return RunPhase.FINISHED
        return RunPhase.RUNNING if self.done or self.running else RunPhase.QUEUED

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "state": self.state,
            "total": self.total,
            "queued": self.queued,
            "running": self.running,
            "completed": self.completed,
            "error": self.error,
            "done": self.done,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "exit_code": self.exit_code,
        }


class RunStore:
    """Run state of every run, in one Redis database, under one key prefix."""

    def __init__(self, client: Redis, prefix: str, retention_days: int) -> None:
        self.r = client
        self.prefix = prefix
        self.ttl = retention_days * 86400
        self._finish = client.register_script(_FINISH)
        self._mark_running = client.register_script(_MARK_RUNNING)

    @classmethod
    def from_url(cls, url: str, prefix: str, retention_days: int) -> RunStore:
        return cls(connect(url), prefix, retention_days)

    # -- keys ----------------------------------------------------------------------------
    def key(self, run_id: str, part: str) -> str:
        return f"{self.prefix}:run:{run_id}:{part}"

    def lease_key(self, context: str) -> str:
        return f"{self.prefix}:lease:{context}"

    def run_keys(self, run_id: str) -> list[str]:
        parts = (
            "plan",
            "meta",
            "targets",
            "covers",
            "state",
            "counts",
            "done",
            "finalize",
            "result",
        )
        return [self.key(run_id, p) for p in parts]

    # -- creating a run ------------------------------------------------------------------
    def create_run(
        self,
        run_id: str,
        plan: Mapping[str, Any],
        entries: Iterable[Mapping[str, Any]],
        covers: Mapping[str, Sequence[Mapping[str, Any]]],
        total: int,
        *,
        created_at: str,
        results_dir: str | None,
    ) -> int:
        """Store a run's plan and target entries; returns the number of entries pushed.

        Entries go in batches (a 10,000-target run is ten round trips, never one huge
        command); the meta hash with `total` is written last, so a half-created run is
        never picked up as complete.
        """
        ttl = self.ttl
        k_targets = self.key(run_id, "targets")
        n = 0
        with self._guard("creating run"):
            pipe = self.r.pipeline(transaction=False)
            pipe.set(self.key(run_id, "plan"), json.dumps(plan), ex=ttl)
            batch: list[str] = []
            for e in entries:
                batch.append(json.dumps(e, separators=(",", ":")))
                if len(batch) >= _PUSH_BATCH:
                    pipe.rpush(k_targets, *batch)
                    n += len(batch)
                    batch = []
                    pipe.execute()
            if batch:
                pipe.rpush(k_targets, *batch)
                n += len(batch)
            pipe.expire(k_targets, ttl)
            if covers:
                k_covers = self.key(run_id, "covers")
                pipe.hset(k_covers, mapping={k: json.dumps(list(v)) for k, v in covers.items()})
                pipe.expire(k_covers, ttl)
            meta: dict[Any, Any] = {"total": str(total), "created_at": created_at}
            if results_dir:
                meta["results_dir"] = results_dir
            pipe.hset(self.key(run_id, "meta"), mapping=meta)
            pipe.expire(self.key(run_id, "meta"), ttl)
            pipe.hset(
                self.key(run_id, "counts"), mapping={"running": 0, "completed": 0, "error": 0}
            )
            pipe.expire(self.key(run_id, "counts"), ttl)
            pipe.zadd(f"{self.prefix}:runs", {run_id: time.time()})
            pipe.expire(f"{self.prefix}:runs", ttl)
            pipe.execute()
        return n

    # -- reading a run -------------------------------------------------------------------
    def plan(self, run_id: str) -> dict[str, Any] | None:
        with self._guard("reading the run plan"):
            raw = self.r.get(self.key(run_id, "plan"))
        return None if raw is None else cast(dict[str, Any], json.loads(cast(str, raw)))

    def meta(self, run_id: str) -> dict[str, str]:
        with self._guard("reading run meta"):
            return cast(dict[str, str], self.r.hgetall(self.key(run_id, "meta")))

    def entries(self, run_id: str, start: int, stop: int) -> list[dict[str, Any]]:
        """Target entries [start, stop) of a run."""
        with self._guard("reading targets"):
            raw = cast(list[str], self.r.lrange(self.key(run_id, "targets"), start, stop - 1))
        return [json.loads(x) for x in raw]

    def iter_entries(self, run_id: str, batch: int = 500) -> Iterator[dict[str, Any]]:
        """Every target entry of the run, read `batch` at a time (recovery's orphan sweep)."""
        start = 0
        while True:
            chunk = self.entries(run_id, start, start + batch)
            yield from chunk
            if len(chunk) < batch:
                return
            start += batch

    def covered(self, run_id: str, scan_id: str) -> list[dict[str, Any]]:
        with self._guard("reading covered targets"):
            raw = self.r.hget(self.key(run_id, "covers"), scan_id)
        return [] if raw is None else cast(list[dict[str, Any]], json.loads(cast(str, raw)))

    def status(self, run_id: str) -> RunStatus | None:
        with self._guard("reading run status"):
            pipe = self.r.pipeline(transaction=False)
            pipe.hgetall(self.key(run_id, "meta"))
            pipe.hgetall(self.key(run_id, "counts"))
            meta, counts = pipe.execute()
        if not meta:
            return None
        total = int(meta.get("total", 0))
        running = max(0, int(counts.get("running", 0)))
        completed = int(counts.get("completed", 0))
        error = int(counts.get("error", 0))
        return RunStatus(
            run_id=run_id,
            total=total,
            queued=max(0, total - running - completed - error),
            running=running,
            completed=completed,
            error=error,
            created_at=meta.get("created_at"),
            finished_at=meta.get("finished_at"),
            exit_code=int(meta["exit_code"]) if "exit_code" in meta else None,
        )

    def result(self, run_id: str) -> dict[str, Any] | None:
        with self._guard("reading the run result"):
            raw = self.r.get(self.key(run_id, "result"))
        return None if raw is None else cast(dict[str, Any], json.loads(cast(str, raw)))

    def target_states(self, run_id: str) -> dict[str, str]:
        """{scan id: state} of the run's targets (recovery's orphan sweep)."""
        with self._guard("reading target states"):
            return cast(dict[str, str], self.r.hgetall(self.key(run_id, "state")))

    # -- progress ------------------------------------------------------------------------
    def is_done(self, run_id: str, scan_id: str) -> bool:
        with self._guard("checking a target"):
            return bool(self.r.sismember(self.key(run_id, "done"), scan_id))

    def mark_running(self, run_id: str, scan_id: str) -> None:
        with self._guard("marking a target running"):
            self._mark_running(
                keys=[self.key(run_id, "state"), self.key(run_id, "counts")],
                args=[scan_id, self.ttl],
            )

    def finish(self, run_id: str, outcomes: Sequence[tuple[str, str]]) -> tuple[int, int, int]:
        """Record summaries written: (scan_id, "completed"|"error") pairs.

        Returns (newly recorded, done, total). Idempotent: a scan id already done is not
        counted again, so a redelivered task can call this freely.
        """
        args: list[str | int] = [self.ttl]
        for scan_id, status in outcomes:
            args += [scan_id, status]
        with self._guard("recording a result"):
            added, done, total = cast(
                list[int],
                self._finish(
                    keys=[
                        self.key(run_id, "done"),
                        self.key(run_id, "state"),
                        self.key(run_id, "counts"),
                        self.key(run_id, "meta"),
                    ],
                    args=args,
                ),
            )
        return int(added), int(done), int(total)

    def begin_finalize(self, run_id: str, lock_seconds: int = 300) -> bool:
        """Take the finalize lock (SET NX with expiry: a dead finalizer cannot hold it)."""
        with self._guard("taking the finalize lock"):
            return bool(self.r.set(self.key(run_id, "finalize"), "1", nx=True, ex=lock_seconds))

    def end_finalize(self, run_id: str, run: Mapping[str, Any]) -> None:
        with self._guard("storing the run result"):
            pipe = self.r.pipeline(transaction=True)
            pipe.set(self.key(run_id, "result"), json.dumps(run), ex=self.ttl)
            pipe.hset(
                self.key(run_id, "meta"),
                mapping={
                    "finished_at": str(run.get("finished_at") or ""),
                    "exit_code": str(run.get("exit_code", 3)),
                },
            )
            pipe.execute()

    def is_finalized(self, run_id: str) -> bool:
        with self._guard("reading run meta"):
            return bool(self.r.hexists(self.key(run_id, "meta"), "finished_at"))

    # -- slots and locks register their own Lua on this client -----------------------
    def script(self, source: str) -> Any:
        return self.r.register_script(source)

    def delete_run(self, run_id: str) -> None:
        with self._guard("deleting a run"):
            self.r.delete(*self.run_keys(run_id))
            self.r.zrem(f"{self.prefix}:runs", run_id)

    def ping(self) -> None:
        with self._guard("connecting"):
            self.r.ping()

    def _guard(self, what: str) -> guarded:
        return guarded(what)


class MemoryRunState:
    """Run state in memory, for `scan` and `submit --local`: the same contract as RunStore."""

    def __init__(
        self,
        total: int,
        covers: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.total = total
        self.covers = {k: [dict(c) for c in v] for k, v in (covers or {}).items()}
        self.states: dict[str, str] = {}
        self.done: set[str] = set()
        self.run: RunDocument | None = None
        self._finalizing = False
        self._lock = threading.Lock()
        self._progress = progress

    def is_done(self, run_id: str, scan_id: str) -> bool:
        with self._lock:
            return scan_id in self.done

    def mark_running(self, run_id: str, scan_id: str) -> None:
        with self._lock:
            if scan_id not in self.done:
                self.states.setdefault(scan_id, "running")

    def covered(self, run_id: str, scan_id: str) -> list[dict[str, Any]]:
        return self.covers.get(scan_id, [])

    def finish(self, run_id: str, outcomes: Sequence[tuple[str, str]]) -> tuple[int, int, int]:
        with self._lock:
            added = 0
            for scan_id, status in outcomes:
                if scan_id not in self.done:
                    self.done.add(scan_id)
                    self.states[scan_id] = status
                    added += 1
            done = len(self.done)
        if added and self._progress is not None:
            self._progress(done, self.total)
        return added, done, self.total

    def begin_finalize(self, run_id: str, lock_seconds: int = 300) -> bool:
        with self._lock:
            if self._finalizing:
                return False
            self._finalizing = True
            return True

    def end_finalize(self, run_id: str, run: RunDocument) -> None:
        self.run = run

    def is_finalized(self, run_id: str) -> bool:
        return self.run is not None
