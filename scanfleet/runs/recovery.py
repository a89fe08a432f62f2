"""Recovery of a dead worker's scans and messages within about two lease periods.

A fleet scan holds a cluster-slot lease (store/slots.py) renewed by a heartbeat every
lease/3; next to the lease, Redis keeps what is needed to run the scan again (run id and
target). When a worker dies (`kill -9`, a node lost) its heartbeats stop and the lease
expires after at most one lease period. Every worker process runs a `Watcher` that calls
`recover_expired` every lease/2: it claims the expired leases (atomically, so one worker
re-runs each scan), revokes each claimed scan's identity (deletes its ServiceAccount with
the worker's admin kubeconfig; the Role and RoleBinding it owns follow by garbage
collection) and publishes the scan again at once. The dead worker's original message is
redelivered later (after Redis's visibility timeout) and finds the result recorded
(`is_done`), or the scan leased by its re-run (`SlotBusy`, then `is_done`): one result per
target.

What it must never do: re-run a scan whose result is recorded; revoke anything but the
`scanfleet-<scan_id>` ServiceAccount of a claimed scan, and that only when it has
scanfleet's shape (`identity.not_ours`) and still the UID it was read with; let a failure
(Redis or a cluster down) stop the watcher; talk to Redis or Celery itself (the store's
`RedisSlots` and a publish callable do). Not covered: a worker dying between releasing
its lease and recording the result (milliseconds) falls back to the visibility timeout.

Messages without a lease: a worker also holds messages it has taken from the queue but
not started (prefetched, a deferred retry kept in memory until its countdown, a scan
waiting for a slot). Each worker's main process records the delivery tag of every
message it receives under a lease of its own (store/holders.py), renewed every lease/3.
With `workers` and `restore`, a pass first claims the workers whose lease expired (one
caller gets each), then the expired scan leases, and gives the dead workers' messages back
to the queue last (`restore`: kombu's own restore of an unacknowledged message, with its
ETA, so a deferred retry keeps its countdown). A scan lease of a dead worker is revoked
but not re-published (its message is given back and runs once); a scan lease of a live
worker (a stalled child) is revoked and re-published as before, one lease after expiry.
The order matters: the dead scan's identity is revoked before its message can run again.
A message the broker recorded as delivered but no worker recorded (its worker died in the
moment between the two) is given back too, half a lease after it is first seen unheld
(`unheld`). Not covered: a message popped from the queue and never recorded by the broker
(the same moment, one step earlier); `OrphanSweep` re-queues its target once the broker is
idle.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from scanfleet.core.errors import ScanfleetError
from scanfleet.core.targets import Target, scan_id_for
from scanfleet.identity.mint import not_ours, object_name, revoke
from scanfleet.kube.client import ClientCache

log = structlog.get_logger(__name__)

Publish = Callable[[str, Mapping[str, Any]], None]
"""Queue a scan task again: (run id, target dict), exactly the scan task's arguments."""


class ExpiredLeases(Protocol):
    """What recovery needs from `store.slots.RedisSlots`."""

    def lease_contexts(self) -> list[str]: ...

    def claim_expired(self, context: str) -> list[tuple[str, dict[str, Any]]]: ...


class Done(Protocol):
    def is_done(self, run_id: str, scan_id: str) -> bool: ...


class DeadWorkers(Protocol):
    """What recovery needs from `store.holders.MessageHolders`."""

    def claim_dead(self) -> dict[str, list[str]]: ...

    def alive(self, worker: str) -> bool: ...


Restore = Callable[[Sequence[str]], int]
"""Give messages (delivery tags) back to the queue; returns how many were still held."""


@dataclass
class Recovered:
    """What one pass did, for logs and tests."""

    rerun: list[str] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)
    revoke_failed: list[str] = field(default_factory=list)
    returned: list[str] = field(default_factory=list)
    """Scans of dead workers: revoked, not re-published (their message is given back)."""
    dead_workers: list[str] = field(default_factory=list)
    unheld: list[str] = field(default_factory=list)
    """Messages no worker recorded (their worker died while receiving them), given back."""
    restored: int = 0
    """Messages of dead workers, and unheld ones, given back to the queue."""


def recover_expired(
    leases: ExpiredLeases,
    state: Done,
    clients: ClientCache,
    publish: Publish,
    workers: DeadWorkers | None = None,
    restore: Restore | None = None,
    unheld: Callable[[], list[str]] | None = None,
) -> Recovered:
    """One pass: claim dead workers, claim every expired lease and revoke its scan's
    identity, run it again (re-published, or its dead worker's message given back), and
    give back the messages no worker recorded (`unheld`: `MessageHolders.claim_unheld`)."""
    out = Recovered()
    dead = workers.claim_dead() if workers is not None else {}
    out.dead_workers = sorted(dead)
    for context in leases.lease_contexts():
        for scan_id, rerun in leases.claim_expired(context):
            run_id = rerun.get("run_id")
            raw = rerun.get("target")
            if not isinstance(run_id, str) or not isinstance(raw, dict):
                continue  # a lease taken without a rerun record: nothing to re-run
            target = Target.from_dict(raw)
            if state.is_done(run_id, scan_id):
                out.already_done.append(scan_id)
                continue
            if not _revoke(clients, target, scan_id):
                out.revoke_failed.append(scan_id)
            holder = rerun.get("worker")
            if _republish(workers, dead, holder):
                publish(run_id, target.to_dict())
                out.rerun.append(scan_id)
            else:
                out.returned.append(scan_id)
            log.warning(
                "scan.recovered",
                run_id=run_id,
                scan_id=scan_id,
                context=context,
                namespace=target.namespace,
                pod=target.pod,
                container=target.container,
                via="publish" if scan_id in out.rerun else "message",
            )
    tags = [tag for held in dead.values() for tag in held]
    if unheld is not None and restore is not None:
        out.unheld = unheld()
    if (tags or out.unheld) and restore is not None:
        out.restored = restore([*tags, *out.unheld])
    if dead:
        log.warning(
            "worker.recovered", workers=out.dead_workers, held=len(tags), restored=out.restored
        )
    if out.unheld:
        log.warning("message.unheld_recovered", messages=len(out.unheld))
    return out


def _republish(workers: DeadWorkers | None, dead: Mapping[str, object], holder: object) -> bool:
    """Publish a claimed scan again unless its worker is dead: that worker's message is
    given back to the queue by whoever claimed the worker (this pass or another's)."""
    if workers is None or not isinstance(holder, str):
        return True
    return holder not in dead and workers.alive(holder)


def _revoke(clients: ClientCache, target: Target, scan_id: str) -> bool:
    """Delete the dead scan's ServiceAccount if it is scanfleet's shape (identity.not_ours),
    with a UID precondition; the garbage collector removes the Role and RoleBinding it owns.
    A failure is logged: the janitor's job then, and the re-run's mint replaces it."""
    name = object_name(scan_id)
    try:
        kube = clients.get(target.context)
        obj = kube.read_object("ServiceAccount", target.namespace, name)
        if obj is None:
            return True  # the dead scan never created it, or its own revoke had run
        why = not_ours(obj | {"kind": "ServiceAccount"})
        if why is not None:
            log.error("recovery.not_ours", scan_id=scan_id, object=name, reason=why)
            return False
        return (
            revoke(kube, target.namespace, name, uids={"ServiceAccount": obj["uid"]}) == "complete"
        )
    except ScanfleetError as e:
        log.error("recovery.revoke_failed", scan_id=scan_id, context=target.context, error=str(e))
        return False


class Watcher:
    """A daemon thread running `check` every `interval` seconds until `stop()`.

    Every exception of a pass is logged and the next pass runs on time: a Redis restart
    or an unreachable cluster must not end recovery for the worker's lifetime."""

    def __init__(
        self, check: Callable[[], object], interval: float, name: str = "scanfleet-recovery"
    ) -> None:
        self.check = check
        self.interval = max(0.5, interval)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> Watcher:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception as e:  # keep watching: the next pass retries
                log.warning("recovery.pass_failed", error=f"{type(e).__name__}: {e}"[:300])


PublishFanOut = Callable[[str, Sequence[tuple[int, int]]], None]
"""Queue fan-out messages for target entry ranges [start, stop) of a run."""


class RunProgress(Protocol):
    """What the orphan sweep reads from `store.state.RunStore`."""

    def status(self, run_id: str) -> Any: ...

    def iter_entries(self, run_id: str, batch: int = 500) -> Iterator[dict[str, Any]]: ...

    def target_states(self, run_id: str) -> dict[str, str]: ...


class OrphanSweep:
    """The last net: targets whose message is nowhere.

    kombu's Redis transport pops a message (BRPOP) before it writes it to its unacknowledged
    hash; a worker killed in between (it happens when a message arrives as it dies) loses the
    message for good, and a Redis restart without persistence loses the queue. No lease or
    owner record can name such a message. So, once the broker holds no message at all
    (`idle`: queue and unacknowledged hash empty) on two passes in a row while an unfinished
    recent run's count of results has not moved, nothing can still be working on that run:
    one worker (`claim`, once per lease) queues fan-outs for exactly the targets without a
    result. A duplicate is harmless (results are a set); a message that was only slow is
    impossible here, since every live message is queued or unacknowledged.
    """

    def __init__(
        self,
        runs: RunProgress,
        idle: Callable[[], bool],
        recent: Callable[[], Sequence[str]],
        claim: Callable[[str], bool],
        publish: PublishFanOut,
    ) -> None:
        self.runs = runs
        self.idle = idle
        self.recent = recent
        self.claim = claim
        self.publish = publish
        self._quiet: dict[str, int] = {}

    def __call__(self) -> dict[str, int]:
        """One pass; returns {run id: targets queued again}."""
        if not self.idle():
            self._quiet = {}
            return {}
        out: dict[str, int] = {}
        quiet: dict[str, int] = {}
        for run_id in self.recent():
            st = self.runs.status(run_id)
            if st is None or st.finished or st.done >= st.total:
                continue
            quiet[run_id] = st.done
            if self._quiet.get(run_id) != st.done or not self.claim(run_id):
                continue  # first quiet look (a submit may be publishing), or claimed
            ranges = missing_ranges(self.runs, run_id)
            if ranges:
                self.publish(run_id, ranges)
                out[run_id] = sum(b - a for a, b in ranges)
                log.warning("run.orphans_requeued", run_id=run_id, targets=out[run_id])
        self._quiet = quiet
        return out


def missing_ranges(runs: RunProgress, run_id: str) -> list[tuple[int, int]]:
    """Index ranges [start, stop) of the run's target entries without a result."""
    states = runs.target_states(run_id)
    ranges: list[tuple[int, int]] = []
    for i, raw in enumerate(runs.iter_entries(run_id)):
        sid = scan_id_for(run_id, Target.from_dict(raw))
        if states.get(sid) in ("completed", "error"):
            continue
        if ranges and ranges[-1][1] == i:
            ranges[-1] = (ranges[-1][0], i + 1)
        else:
            ranges.append((i, i + 1))
    return ranges
